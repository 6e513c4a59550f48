"""Runs the ```python blocks of a Markdown file in order, in one interpreter, as a reader would.

    python tests/package/readme_blocks.py README.md

A block whose first line is `# not run: <reason>` is only compiled (syntax-checked), not run.
Pretrained weights become random ones (timm.create_model(pretrained=True) builds the model with
pretrained=False), and connections leave no further than this machine, so the examples run
offline and fast. A failing block's traceback names its lines in the Markdown file.
Used by test_readme.py; exits 1 on the first block that fails.
"""
from __future__ import annotations

import re
import socket
import sys
import traceback

FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.S | re.M)
NOT_RUN = re.compile(r"#\s*not run:\s*(\S.*)")


def python_blocks(text: str):
    """(first line number in the file, source, reason not to run or None) for each ```python block."""
    for match in FENCE.finditer(text):
        if match.group(1).lower() not in ("python", "py", "python3"):
            continue
        line = text.count("\n", 0, match.start(2)) + 1
        source = match.group(2)
        first = source.lstrip().splitlines()[0] if source.strip() else ""
        marker = NOT_RUN.fullmatch(first.strip())
        if first.strip().startswith("# not run") and marker is None:
            raise SystemExit(f"line {line}: `# not run:` needs a reason after the colon")
        yield line, source, marker.group(1) if marker else None


def random_weights() -> None:
    """timm.create_model(..., pretrained=True) gives the same model with random weights."""
    try:
        import timm
        import timm.models._factory as factory
    except ImportError:
        return
    create = factory.create_model

    def create_model(*args, pretrained=False, **kwargs):
        return create(*args, pretrained=False, **kwargs)

    timm.create_model = timm.models.create_model = factory.create_model = create_model


def offline() -> None:
    """Connections to anything but this machine fail at once (no downloads, no hanging)."""
    connect = socket.socket.connect

    def local_only(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in ("localhost", "127.0.0.1", "::1"):
            raise OSError(f"README examples run offline: connection to {host} refused")
        return connect(self, address)

    socket.socket.connect = local_only


def main(path: str) -> int:
    text = open(path, encoding="utf-8").read()
    blocks = list(python_blocks(text))
    offline()
    random_weights()
    namespace = {"__name__": "__main__"}
    for line, source, reason in blocks:
        # pad with newlines so that tracebacks give the block's line numbers in the file
        code = compile("\n" * (line - 1) + source, path, "exec")
        if reason is not None:
            print(f"{path}:{line}: not run ({reason})")
            continue
        print(f"{path}:{line}: running", flush=True)
        try:
            exec(code, namespace)
        except BaseException:
            traceback.print_exc()
            print(f"{path}:{line}: this block failed", file=sys.stderr)
            return 1
    print(f"{len(blocks)} python blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
