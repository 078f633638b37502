"""`imgcls predict` against a live server, and its errors."""

from __future__ import annotations

from pathlib import Path

from imgcls.cli import main
from tests.api.conftest import class_image


def test_predict_prints_one_line_per_file(server_url: str, tmp_path: Path, capsys):
    files = []
    for label in (0, 2):
        path = tmp_path / f"img{label}.png"
        path.write_bytes(class_image(label, 1000 + label))
        files.append(str(path))
    for multipart in ([], ["--multipart"]):
        code = main(
            [
                "predict",
                "--url",
                f"http://{server_url}",
                "--model",
                "tiny",
                "--top-k",
                "2",
                *multipart,
                *files,
            ]
        )
        out, err = capsys.readouterr()
        assert code == 0, err
        lines = out.splitlines()
        assert len(lines) == 3 and lines[-1] == "model tiny v1"
        assert lines[0].startswith(files[0]) and "class_" in lines[0]


def test_predict_reports_the_server_s_error_message(server_url: str, tmp_path: Path, capsys):
    path = tmp_path / "x.png"
    path.write_bytes(b"not an image")
    code = main(["predict", "--url", f"http://{server_url}", "--model", "tiny", str(path)])
    assert code == 1
    assert "HTTP 400: image 0: not a decodable image" in capsys.readouterr().err


def test_predict_without_a_server_says_so(tmp_path: Path, capsys):
    path = tmp_path / "x.png"
    path.write_bytes(class_image(0))
    code = main(["predict", "--url", "http://127.0.0.1:9", str(path)])
    assert code == 1
    assert "is `imgcls serve` running there?" in capsys.readouterr().err
