"""pip's configured package sources (``pip config list``: files and PIP_* variables) as uv options,
shell-quoted on one line: --index-url, --extra-index-url, --find-links and --constraint."""

import shlex
import subprocess
import sys

FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url"}
FLAGS |= {"find-links": "--find-links", "constraint": "--constraint"}


def uv_options(pip_config_list: str) -> list[str]:
    """``pip config list`` lines (``global.find-links='/opt/wheels'``) -> uv options, each once.

    >>> uv_options("global.extra-index-url='file:///a file:///b'\\n:env:.find-links='/w'\\nglobal.find-links='/w'")
    ['--extra-index-url', 'file:///a', '--extra-index-url', 'file:///b', '--find-links', '/w']
    """
    out: list[str] = []
    for line in pip_config_list.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if name not in FLAGS or section not in ("global", "install", ":env:") or not value:
            continue
        for v in " ".join(shlex.split(value)).split():
            pair = [FLAGS[name], v]
            if not any(out[i : i + 2] == pair for i in range(0, len(out), 2)):
                out += pair
    return out


if __name__ == "__main__":
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    print(" ".join(shlex.quote(a) for a in uv_options(listed)))
