"""Every page with ```console commands has a test that runs them (tests/docs_support.py), or
is listed below as not run yet, with the reason: a new page cannot slip through unrun."""

from __future__ import annotations

from docs_support import DOCS, ROOT, parse_console, python_files

RUN_BY = {
    "README.md": "tests/docs/test_readme.py",
    "docs/grpcurl.md": "tests/docs/test_grpcurl_page.py",
    "docs/python-sdk.md": "tests/docs/test_python_sdk_page.py",
    "docs/errors.md": "tests/docs/test_errors_page.py",
    "docs/tasks.md": "tests/docs/test_tasks_page.py",
    "docs/several-nodes.md": "tests/docs/test_several_nodes_page.py",
    "docs/metrics-and-logs.md": "tests/docs/test_metrics_page.py",
    "docs/deployment.md": "tests/docs/test_deployment_page.py",
    "docs/agents-in-other-languages.md": "tests/docs/test_other_languages_page.py",
    "docs/operations.md": "tests/test_runbook.py",
    "docs/security.md": "tests/test_security_doc.py",
}
# Pages whose console commands no test runs yet, with why: none now. A page goes here only
# while its test is being written; until then it may drift.
NOT_RUN_YET: dict[str, str] = {}


def pages_with_commands() -> set[str]:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    return {str(p.relative_to(ROOT)) for p in pages if parse_console(p.read_text())}


def test_every_page_with_commands_is_run_or_listed() -> None:
    pages = pages_with_commands()
    unaccounted = sorted(pages - RUN_BY.keys() - NOT_RUN_YET.keys())
    assert not unaccounted, f"console commands no test runs: {unaccounted}"
    stale = sorted((RUN_BY.keys() | NOT_RUN_YET.keys()) - pages)
    assert not stale, f"listed here, but no console command in: {stale}"
    assert not RUN_BY.keys() & NOT_RUN_YET.keys()


def test_each_runner_names_its_page() -> None:
    for page, test in RUN_BY.items():
        source = (ROOT / test).read_text()
        assert page.split("/")[-1] in source, f"{test} does not read {page}"


def test_every_python_block_of_the_docs_is_a_file() -> None:
    """python blocks are run as files; a fragment is shown as ```py instead."""
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        python_files(page.read_text())
