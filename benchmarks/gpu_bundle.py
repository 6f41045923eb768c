"""Prepare ``.gpu/`` for running ``gpu_check.py`` on a lent GPU machine that has torch, transformers,
peft and accelerate but not inspect-ai, and no network (this workplace's device tool: it carries at
most 64 MiB beside the working tree).

    python benchmarks/gpu_bundle.py            # here: wheels, the embedded tokenizer, stand-in modules
    bash benchmarks/gpu_run.sh 480             # there: unpack them and run gpu_check --shape 7b

What goes in ``.gpu/`` (ignored by git):

- ``wheels/``: inspect-ai and the dependencies the GPU image lacks, for CPython 3.12 on x86-64. The
  inspect-ai wheel is repacked without its sandbox-tool binaries and log viewer (about 38 MB unused here).
  boto3/botocore/aiobotocore/s3fs/s3transfer/debugpy are left out:
- ``stubs/``: tiny stand-ins for the names Inspect imports from them (S3 logs are not used here);
- ``tokenizer/``: the embedded model's tokenizer (the random-weight models use it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / ".gpu"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_5_x86_64"]
# What inspect-ai (and trl for the finetune stage) need beyond the GPU image's packages (device KINDS.md).
WHEELS = [
    "inspect_ai==0.3.285", "agent-client-protocol", "beautifulsoup4", "soupsieve", "docstring-parser", "fastapi",
    "starlette", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "ijson", "jsonlines",
    "jsonpatch", "jsonpointer", "jsonpath-ng", "jsonref", "jsonschema", "jsonschema-specifications", "referencing",
    "rpds-py", "mmh3", "nest_asyncio2", "python-dotenv", "semver", "shortuuid", "sniffio", "tenacity", "textual",
    "universal-pathlib", "uvicorn", "zipfile-zstd", "zstandard", "platformdirs", "trl==1.16.0", "datasets==5.2.0",
    "dill", "multiprocess", "linkify-it-py", "uc-micro-py", "mdit-py-plugins", "pathlib-abc<0.6", "anyio", "click",
    "typing-extensions", "opentelemetry-api", "importlib-metadata",
]
STUBS = {
    "botocore/__init__.py": "UNSIGNED = object()\n",
    "botocore/exceptions.py": "".join(
        f"class {name}(Exception):\n    pass\n\n\n" for name in (
            "BotoCoreError", "ClientError", "ResponseStreamingError", "ConnectionClosedError", "ConnectTimeoutError",
            "EndpointConnectionError", "ReadTimeoutError")),
    "botocore/config.py": "class Config:\n    def __init__(self, *args, **kwargs):\n        pass\n",
    "aiobotocore/__init__.py": "",
    "aiobotocore/response.py": "class StreamingBody:\n    pass\n",
    "s3fs/__init__.py": "class S3FileSystem:\n    def __init__(self, *args, **kwargs):\n"
                        "        raise RuntimeError('S3 is not available in this bundle')\n",
    "s3fs/core.py": "version_id_kw = {}\n\n\ndef _error_wrapper(*args, **kwargs):\n"
                    "    raise RuntimeError('S3 is not available in this bundle')\n",
}


def main() -> None:
    wheels = BUNDLE / "wheels"
    if BUNDLE.exists():
        shutil.rmtree(BUNDLE)
    wheels.mkdir(parents=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)] + ["--platform", "any"]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(wheels), *WHEELS],
                   check=True)
    for wheel in wheels.glob("inspect_ai-*.whl"):  # sandbox tool binaries and the viewer: not needed here
        trimmed = wheel.with_suffix(".zip")
        with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                if not item.filename.startswith(("inspect_ai/binaries/", "inspect_ai/_view/dist/")):
                    target.writestr(item, source.read(item))
        wheel.unlink()
    for name, text in STUBS.items():
        path = BUNDLE / "stubs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    from inspect_em.model import embedded

    folder = embedded.prepare()
    tokenizer = BUNDLE / "tokenizer"
    tokenizer.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (folder / name).is_file():
            shutil.copy2(folder / name, tokenizer / name)
    size = sum(f.stat().st_size for f in BUNDLE.rglob("*") if f.is_file())
    print(f"{BUNDLE}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
