"""`make demo`: digits -> trained, evaluated model -> bundle -> served over HTTP -> predictions.

One script that grows with the project. Every step is the same `imgcls` command a user would
run; the script only chains them and checks the answers.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMGCLS = [sys.executable, "-m", "imgcls"]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train() -> tuple[Path, Path, Path]:
    """Run `imgcls train`, echoing its output; return the run folder, the bundle folder and the report."""
    process = subprocess.Popen(
        [*IMGCLS, "train", "--config", "configs/digits.yaml"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    run_dir = bundle_dir = report = None
    for line in process.stdout:
        print(line, end="", flush=True)
        if match := re.match(r"run: (\S+)", line):
            run_dir = ROOT / match.group(1)
        if match := re.match(r"bundle: (\S+)", line):
            bundle_dir = ROOT / match.group(1)
        if match := re.match(r"report: (\S+)", line):
            report = ROOT / match.group(1)
    if process.wait() != 0 or run_dir is None or bundle_dir is None or report is None:
        sys.exit(f"demo: imgcls train failed (exit {process.returncode})")
    return run_dir, bundle_dir, report


def held_back_images(run_dir: Path, count: int) -> list[tuple[Path, str]]:
    """Test-split images (never seen in training), spread over the classes."""
    with (run_dir / "split.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "test"]
    picked = rows[:: max(1, len(rows) // count)][:count]
    return [(ROOT / "data" / "digits" / row["path"], row["label"]) for row in picked]


def v2_predictions(address: str, name: str, version: int, images: list[tuple[Path, str]]) -> None:
    import numpy as np
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=address)
    try:
        metadata = client.get_model_metadata(name, str(version))
        print(
            f"  live {client.is_server_live()}, ready {client.is_model_ready(name, str(version))}, "
            f"platform {metadata['platform']}, inputs {[i['name'] for i in metadata['inputs']]}"
        )
        data = np.array([path.read_bytes() for path, _ in images], dtype=np.object_)
        image_input = triton.InferInput("image", [len(images)], "BYTES")
        image_input.set_data_from_numpy(data, binary_data=True)
        output = triton.InferRequestedOutput("probabilities", class_count=1)
        result = client.infer(name, [image_input], model_version=str(version), outputs=[output])
        for (path, truth), top in zip(images, result.as_numpy("probabilities"), strict=True):
            score, _, label = top[0].decode().split(":")
            print(f"  {path.name}  true {truth}  predicted {label}  score {float(score):.3f}")
    finally:
        client.close()


def main() -> int:
    os.chdir(ROOT)
    if not (ROOT / "data" / "digits").is_dir():
        step("write the embedded digits dataset")
        subprocess.run([*IMGCLS, "data", "digits", "--out", "data/digits"], check=True)

    step("train, evaluate, export and report (configs/digits.yaml)")
    run_dir, bundle_dir, report = train()
    name, version = bundle_dir.parent.name, int(bundle_dir.name)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    step(f"serve models/ on {url}")
    server = subprocess.Popen(
        [*IMGCLS, "serve", "--model-repo", "models", "--port", str(port), "--log-level", "warning"]
    )
    try:
        from service.client import predict_files, wait_until_ready

        started = time.perf_counter()
        wait_until_ready(url)
        print(f"ready after {time.perf_counter() - started:.1f} s")

        step(f"one JSON batch of 20 held-back test images -> {name} v{version}")
        images = held_back_images(run_dir, 20)
        answer = predict_files(url, name, [p for p, _ in images], version=version, top_k=3)
        correct = 0
        for (path, truth), prediction in zip(images, answer["predictions"], strict=True):
            ok = prediction["label"] == truth
            correct += ok
            print(
                f"  {path.name}  true {truth}  predicted {prediction['label']}  score {prediction['score']:.3f}  {'ok' if ok else 'WRONG'}"
            )
        print(f"served accuracy on this batch: {correct}/{len(images)}")

        step("Open Inference Protocol v2 with Triton's own client (binary tensors, classification extension)")
        v2_predictions(f"127.0.0.1:{port}", name, version, images[:5])

        step("one multipart upload")
        path, truth = images[0]
        upload = predict_files(url, name, [path], version=version, multipart=True)
        print(f"  {path.name}  true {truth}  predicted {upload['predictions'][0]['label']}")

        step("why, over HTTP: :explain answers the prediction with its Grad-CAM map")
        import base64

        import httpx

        body = {"instances": [{"b64": base64.b64encode(path.read_bytes()).decode()}]}
        explained = httpx.post(f"{url}/v1/models/{name}/versions/{version}:explain", json=body, timeout=60)
        explained.raise_for_status()
        first = explained.json()["explanations"][0]
        print(
            f"  {path.name}  true {truth}  predicted {first['label']} ({first['score']:.3f}); "
            f"{first['method']} map {first['map_shape'][1]}x{first['map_shape'][0]} px as PNG, with an overlay"
        )

        step("why: Grad-CAM for three held-back images (imgcls explain)")
        subprocess.run(
            [
                *IMGCLS,
                "explain",
                "--bundle",
                str(bundle_dir),
                *(str(p) for p, _ in images[:3]),
                "--out",
                "explained",
            ],
            check=True,
        )
        print(
            f"\ndone: run {run_dir.relative_to(ROOT)}, bundle {bundle_dir.relative_to(ROOT)}"
            f"\ntry it in a browser: `make serve`, then open http://127.0.0.1:8000/"
            f"\nthe evaluation report: {report.relative_to(ROOT)} (open it in a browser; no network needed)"
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
