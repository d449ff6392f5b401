"""The `ltscale` command: one module per subcommand, each with ``add_parser(sub)``; ``main`` turns
every ltscale error, interruption and operating-system error into one line and an exit code."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

from ltscale.core.errors import LtscaleError


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
    previous = _stop_signals_raise()
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
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: every open MLflow run ends KILLED, then exit 143."""


_forks = {"open": 0, "hooked": False, "owner": None}  # forks under way (loader workers)


def _on_stop_signal(signum, frame):
    """SIGTERM raises ``Terminated``, SIGINT ``KeyboardInterrupt`` — except while this process
    forks: raised then, in an at-fork hook (logging's), the exception would be swallowed
    ("Exception ignored in …") and the signal lost, so it is sent again once the fork is done.

    In a forked child that has not yet replaced this handler (a loader worker between its fork
    and its ``worker_init_fn``, which installs ``quiet_worker``) the child follows the same rule
    as ``quiet_worker``: SIGINT is ignored and SIGTERM ends it at once with status 0. The main
    process handles the stop; an exception raised in the child's start-up would print a
    traceback and exit 1, which the main process reports as a failed worker."""
    if _forks["owner"] is not None and os.getpid() != _forks["owner"]:
        if signum == signal.SIGTERM:
            os._exit(0)
        return
    if _forks["open"]:
        import threading

        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _fork_starts():
    _forks["open"] += 1


def _fork_done():
    _forks["open"] = max(0, _forks["open"] - 1)


def _fork_child():
    _forks["open"] = 0


def _stop_signals_raise() -> dict:
    """Make SIGTERM raise ``Terminated`` when nobody else handles it (a submitit job or a test
    harness may have its own handler, which is kept) and SIGINT ``KeyboardInterrupt`` (Python's
    default, but not lost during a fork). Returns the handlers to restore."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    if not _forks["hooked"]:
        os.register_at_fork(before=_fork_starts, after_in_parent=_fork_done,
                            after_in_child=_fork_child)
        _forks["hooked"] = True
    _forks["owner"] = os.getpid()
    previous = {}
    for sig, default in ((signal.SIGTERM, signal.SIG_DFL),
                         (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(sig) is default:
            previous[sig] = signal.signal(sig, _on_stop_signal)
    return previous


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
