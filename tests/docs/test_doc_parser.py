"""The doc-snippet extractor: fences, directives, and the errors that keep markers honest."""

from __future__ import annotations

import doc_snippets as S


def _parse(tmp_path, text: str) -> list[S.Block]:
    (tmp_path / "docs").mkdir(exist_ok=True)
    page = tmp_path / "docs" / "page.md"
    page.write_text(text, encoding="utf-8")
    return S.parse_markdown(page, tmp_path)


def test_runnable_languages_and_line_numbers(tmp_path):
    blocks = _parse(
        tmp_path,
        "# t\n\n```python\nx = 1\n```\n\n```text\nout\n```\n\n"
        "```bash\necho hi\n```\n\n```\nplain\n```\n\n```console\n$ ls\nfile\n```\n",
    )
    assert [(b.lang, b.line, b.id) for b in blocks] == [
        ("python", 3, "docs/page.md:3"),
        ("bash", 11, "docs/page.md:11"),
        ("console", 19, "docs/page.md:19"),
    ]
    assert blocks[0].code == "x = 1\n"
    assert not any(b.error for b in blocks)


def test_directives(tmp_path):
    text = (
        "<!-- doctest: setup=tok,ckpt; continue -->\n"
        '<!-- doctest: replace 1000=>3 "SRC OUT=>ckpt out" ; timeout=9 ; slow -->\n'
        "<!-- doctest: env A=1 B=x=y -->\n\n"
        "```bash\ngpt2 convert SRC OUT --steps 1000\n```\n"
        "<!-- doctest: xfail issue 12: it breaks -->\n```python\npass\n```\n"
        "<!-- doctest: skip two hosts -->\n```sh\nexit 1\n```\n"
    )
    b, x, s = _parse(tmp_path, text)
    assert b.setup == ("tok", "ckpt") and b.cont and b.slow and b.timeout == 9.0
    assert b.code == "gpt2 convert ckpt out --steps 3\n"
    assert b.env == {"A": "1", "B": "x=y"}
    assert x.xfail == "issue 12: it breaks" and not x.cont and x.setup == ()
    assert s.skip == "two hosts"


def test_bad_directives_fail_their_block(tmp_path):
    cases = {
        "<!-- doctest: frobnicate -->\n```python\npass\n```\n": "unknown doctest directive",
        "<!-- doctest: replace nothere=>x -->\n```python\npass\n```\n": "does not occur",
        "<!-- doctest: skip -->\n```python\npass\n```\n": "needs a reason",
        "<!-- doctest: slow -->\n```text\nout\n```\n": "never run",
        "<!-- doctest: slow -->\nprose\n```python\npass\n```\n": "right before",
        "```python\npass\n```\n<!-- doctest: slow -->\n": "end of the page",
    }
    for text, message in cases.items():
        errors = [b.error for b in _parse(tmp_path, text) if b.error]
        assert len(errors) == 1 and message in errors[0], (text, errors)


def test_console_runs_only_prompt_lines():
    code = "$ gpt2 inspect ckpt \\\n    --format tf\nformats: tf\n$ echo done\ndone\n"
    assert S.console_commands(code) == "gpt2 inspect ckpt \\\n    --format tf\necho done\n"


def test_shell_setup_prelude_and_strict_mode():
    b = S.Block("docs/x.md", 1, "bash", "gpt2 inspect openai-release\n", setup=("openai-release",))
    script = S.shell_script(b)
    assert script.startswith("set -euo pipefail\n")
    assert script.index("gpt2 convert ckpt openai-release") < script.index("gpt2 inspect")


def test_every_page_is_found():
    pages = {p.relative_to(S.ROOT).as_posix() for p in S.doc_files()}
    assert {"README.md", "docs/training.md", "docs/testing.md"} <= pages


def test_parallel_runs_each_command_in_its_own_script(tmp_path):
    text = (
        "<!-- doctest: parallel; setup=openai-release -->\n```bash\n# host 0\n"
        "run --rank 0 \\\n    --x 1\n\nrun --rank 1 \\\n    --x 1\n```\n"
    )
    (b,) = _parse(tmp_path, text)
    scripts = S.shell_scripts(b)
    assert b.parallel and len(scripts) == 2
    assert scripts[0].endswith("run --rank 0 \\\n    --x 1\n")
    assert scripts[1].endswith("run --rank 1 \\\n    --x 1\n")
    assert all("openai-release" in s for s in scripts)
