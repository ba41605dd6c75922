"""Runs the Python blocks of one documentation page in one process, one namespace at a time.

Started by test_doc_snippets.py (``python doc_worker.py``) in the page's workspace. It reads one
JSON request per line on stdin and answers one JSON line on the original stdout; whatever the
blocks print goes to stderr (a log file the test shows on failure). Requests::

    {"reset": true}                      fresh namespace
    {"code": ..., "file": ..., "line": N, "doctest": bool}
"""

from __future__ import annotations

import doctest
import json
import os
import sys
import traceback


def _run(req: dict, ns: dict) -> dict:
    code, filename, line = req["code"], req["file"], req["line"]
    if req.get("doctest"):
        parser = doctest.DocTestParser()
        test = parser.get_doctest(code, ns, f"{filename}:{line}", filename, line)
        report: list[str] = []
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test, out=report.append, clear_globs=False)
        ns.update(test.globs)
        if runner.failures:
            return {"ok": False, "error": "".join(report)}
        return {"ok": True}
    # pad with newlines so that tracebacks give the line number in the markdown file
    compiled = compile("\n" * line + code, filename, "exec")
    exec(compiled, ns)
    return {"ok": True}


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # prints of the blocks go to the log, not the protocol
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    ns: dict = {"__name__": "__main__"}
    for raw in sys.stdin:
        req = json.loads(raw)
        if req.get("reset"):
            ns = {"__name__": "__main__"}
            proto.write(json.dumps({"ok": True}) + "\n")
            continue
        print(f"----- {req['file']}:{req['line']}", file=sys.stderr, flush=True)
        try:
            resp = _run(req, ns)
        except BaseException:  # anything, SystemExit included, is a failed block
            resp = {"ok": False, "error": traceback.format_exc()}
        sys.stdout.flush()
        sys.stderr.flush()
        proto.write(json.dumps(resp) + "\n")


if __name__ == "__main__":
    main()
