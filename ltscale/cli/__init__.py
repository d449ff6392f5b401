"""The `ltscale` command: one module per subcommand, each with ``add_parser(sub)``; ``main`` turns
every ltscale error, interruption and operating-system error into one line and an exit code."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

from ltscale.errors import LtscaleError


def build_parser() -> argparse.ArgumentParser:
    from ltscale.cli import bench, compare, data, export, manifest, stages, submit

    p = argparse.ArgumentParser(prog="ltscale", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for module in (data, manifest, bench, stages, submit, compare, export):
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may also follow options (`finetune R --from X key=value`)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    previous_term = _terminate_like_interrupt()
    try:
        return int(args.func(args) or 0)
    except LtscaleError as exc:
        print(f"ltscale: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("ltscale: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("ltscale: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`ltscale manifest stats M | head -1`)
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        print("ltscale: error: output closed early (broken pipe)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ltscale: error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: every open MLflow run ends KILLED, then exit 143."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _terminate_like_interrupt():
    """Make SIGTERM raise ``Terminated`` when nobody else handles it (a submitit job or a test
    harness may have its own handler, which is kept). Returns the handler to restore."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


_OS_HINTS = {errno.EROFS: "the file system is read-only",
             errno.ENOSPC: "no space left on the device",
             errno.EDQUOT: "disk quota exceeded",
             errno.ELOOP: "a symbolic link loop",
             errno.EMLINK: "too many links",
             errno.EACCES: "permission denied",
             errno.EPERM: "operation not permitted",
             errno.ENOENT: "no such file or directory",
             errno.ENOTDIR: "a path component is not a folder",
             errno.EISDIR: "is a folder",
             errno.ENAMETOOLONG: "file name too long",
             errno.EEXIST: "already exists"}


def os_error_line(exc: OSError) -> str:
    """One line for an operating-system error, naming the path(s) it concerns."""
    what = _OS_HINTS.get(exc.errno) or (exc.strerror or str(exc) or type(exc).__name__)
    paths = [p for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(str(p) for p in paths) if paths else "(no path given by the system)"
    line = f"{where}: {what}"
    if exc.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES):
        line += "; free space or choose a writable output folder"
    return " ".join(line.split())


if __name__ == "__main__":
    sys.exit(main())
