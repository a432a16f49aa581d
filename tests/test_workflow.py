"""The publishing workflow (.github/workflows/): linted offline, and checked for what it does.

Two linters, both pinned in requirements.txt and both offline: check-jsonschema with GitHub's
workflow schema vendored in it (structure: unknown keys, wrong types, unknown triggers) and
zizmor (the workflow model GitHub runs, e.g. a ``runs-on`` it cannot use, and security:
template injection, credentials, unpinned third-party actions; settings in
.github/zizmor.yml). Neither resolves references between jobs and steps, so
``reference_problems`` does. Each check is shown to fail on a broken copy. Then the workflow
itself: ``make test`` on pushes to main and on pull requests and nothing else run, the HTML
published from main only and kept as an artifact otherwise, and no repository named in it
(the URL lives in _config.yml only).
"""

from __future__ import annotations

import json
import re
import subprocess
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
BOOK = ROOT / ".github" / "workflows" / "book.yml"
ZIZMOR_CONFIG = ROOT / ".github" / "zizmor.yml"
SCRIPTS = Path(sysconfig.get_path("scripts"))  # the bin/ of the environment running pytest


def _tool(name: str) -> str:
    path = SCRIPTS / name
    assert path.is_file(), f"{path} missing: install requirements.txt (make venv)"
    return str(path)


def schema_check(*files: Path) -> subprocess.CompletedProcess[str]:
    """GitHub's workflow schema, as vendored in check-jsonschema (no download)."""
    return subprocess.run([_tool("check-jsonschema"), "--builtin-schema",
                           "vendor.github-workflows", *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def zizmor(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("zizmor"), "--offline", "--no-progress", "--color", "never",
                           "--config", str(ZIZMOR_CONFIG), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def load(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as the boolean True.
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return workflow


def reference_problems(workflow: dict) -> list[str]:
    """Every ``needs`` that names no job, every ``steps.ID`` that names no step of its job."""
    jobs = workflow.get("jobs", {})
    problems = []
    for name, job in jobs.items():
        needs = job.get("needs", [])
        for need in [needs] if isinstance(needs, str) else needs:
            if need not in jobs:
                problems.append(f"job {name} needs {need}, which is not a job")
        ids = {step["id"] for step in job.get("steps", []) if "id" in step}
        for ref in set(re.findall(r"\bsteps\.([A-Za-z_][\w-]*)", json.dumps(job))):
            if ref not in ids:
                problems.append(f"job {name} reads steps.{ref}, which is not a step id of it")
    return problems


def holds(condition: str | None, event: str, ref: str) -> bool:
    """Whether an ``if:`` of these workflows holds for a run that is not cancelled (a small
    translation of GitHub's expression syntax: ==, !=, !, &&, ||, parentheses)."""
    if condition is None:
        return True
    expr = condition.strip().removeprefix("${{").removesuffix("}}")
    expr = (expr.replace("!=", " NE ").replace("!", " not ").replace(" NE ", " != ")
            .replace("&&", " and ").replace("||", " or "))
    context = {"github": SimpleNamespace(event_name=event, ref=ref), "cancelled": lambda: False}
    return bool(eval(expr, {"__builtins__": {}}, context))  # noqa: S307 (our own file)


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job.get("steps", []) if s.get("uses", "").split("@")[0] == action]


def test_there_is_a_workflow() -> None:
    assert BOOK in WORKFLOWS


# --- the linters ----------------------------------------------------------------------------


def test_the_workflows_pass_the_schema() -> None:
    done = schema_check(*WORKFLOWS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_workflows_pass_zizmor() -> None:
    done = zizmor(*WORKFLOWS)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_the_workflows_reference_what_exists(path: Path) -> None:
    assert reference_problems(load(path)) == []


BROKEN = {
    # case: (what is changed, into what, the check that must fail, what it must say)
    "unknown key": ("    timeout-minutes: 150", "    timeout-minute: 150", schema_check,
                    "'timeout-minute'"),
    "unknown trigger": ("  workflow_dispatch:", "  workflow_dispatched:", schema_check,
                        "'workflow_dispatched'"),
    "runs-on without labels": ("runs-on: ubuntu-24.04", "runs-on: {ubuntu: 24}", zizmor,
                               "runs-on"),
    "third-party action on a branch": ("actions/cache@v4", "someone/cache@main", zizmor,
                                       "unpinned-uses"),
    "pull request title in a shell": ("run: make test",
                                      "run: echo '${{ github.event.pull_request.title }}'",
                                      zizmor, "template-injection"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_the_linters_fail_on_a_broken_copy(case: str, tmp_path: Path) -> None:
    old, new, check, says = BROKEN[case]
    text = BOOK.read_text(encoding="utf-8")
    assert old in text, f"the workflow changed: update the case {case!r} of this test"
    broken = tmp_path / "book.yml"
    broken.write_text(text.replace(old, new, 1), encoding="utf-8")
    done = check(broken)
    assert done.returncode != 0, f"{check.__name__} passed a workflow with a {case}"
    assert says in done.stdout + done.stderr, done.stdout + done.stderr


def test_reference_problems_finds_a_wrong_needs_and_step_id() -> None:
    workflow = load(BOOK)
    workflow["jobs"]["deploy"]["needs"] = "tests"
    workflow["jobs"]["deploy"]["steps"][0]["id"] = "deploy"
    problems = reference_problems(workflow)
    assert any("needs tests" in p for p in problems), problems
    assert any("steps.deployment" in p for p in problems), problems


# --- what the workflow does -------------------------------------------------------------------

PUSH_MAIN = ("push", "refs/heads/main")
PULL_REQUEST = ("pull_request", "refs/pull/1/merge")
DISPATCH_BRANCH = ("workflow_dispatch", "refs/heads/topic")


def test_triggers() -> None:
    on = load(BOOK)["on"]
    assert on["push"]["branches"] == ["main"]
    assert "pull_request" in on and "workflow_dispatch" in on


def test_it_runs_make_test_and_nothing_else() -> None:
    workflow = load(BOOK)
    runs = [s["run"].strip() for job in workflow["jobs"].values() for s in job.get("steps", [])
            if "run" in s]
    assert runs == ["make test"], f"the workflow should run the README's `make test` only: {runs}"
    assert workflow["env"]["NFCOURSE_PROFILE"] == "ci"  # as .ci/run
    test = workflow["jobs"]["test"]
    assert test["runs-on"].startswith("ubuntu-")
    assert test["timeout-minutes"] >= 90
    (python,) = steps_using(test, "actions/setup-python")
    assert str(python["with"]["python-version"]) == "3.11"
    assert steps_using(test, "actions/checkout")


def test_actions_are_pinned_to_a_major_version() -> None:
    for job in load(BOOK)["jobs"].values():
        for step in job.get("steps", []):
            if "uses" in step:
                assert re.fullmatch(r"actions/[\w-]+@v\d+", step["uses"]), step["uses"]


def test_main_publishes_the_html_book() -> None:
    jobs = load(BOOK)["jobs"]
    (pages,) = steps_using(jobs["test"], "actions/upload-pages-artifact")
    assert pages["with"]["path"].rstrip("/") == "_build/html"  # with the PDF in it
    deploy = jobs["deploy"]
    assert deploy["needs"] == "test"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert deploy["concurrency"]["cancel-in-progress"] is False
    (step,) = steps_using(deploy, "actions/deploy-pages")
    assert step["id"] == "deployment"
    assert deploy["environment"]["url"] == "${{ steps.deployment.outputs.page_url }}"
    # Published from main only; never from a pull request or another branch.
    for run in (PULL_REQUEST, DISPATCH_BRANCH):
        assert not holds(pages.get("if"), *run) and not holds(deploy.get("if"), *run)
    for run in (PUSH_MAIN, ("workflow_dispatch", "refs/heads/main")):
        assert holds(pages.get("if"), *run) and holds(deploy.get("if"), *run)


def test_pull_requests_keep_the_html_and_every_run_the_screenshots() -> None:
    test = load(BOOK)["jobs"]["test"]
    uploads = {s["with"]["path"].rstrip("/"): s for s in steps_using(test,
                                                                     "actions/upload-artifact")}
    html, screenshots = uploads["_build/html"], uploads["_build/screenshots"]
    assert holds(html.get("if"), *PULL_REQUEST) and holds(html.get("if"), *DISPATCH_BRANCH)
    assert not holds(html.get("if"), *PUSH_MAIN)  # main publishes it instead
    for run in (PUSH_MAIN, PULL_REQUEST, DISPATCH_BRANCH):
        assert holds(screenshots.get("if"), *run)
    # Uploads come after make test, which writes what they upload.
    names = [s.get("run") or s.get("uses") for s in test["steps"]]
    assert names.index("make test") < min(names.index(s["uses"]) for s in uploads.values())


def test_the_workflow_names_no_repository() -> None:
    url = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["repository"]["url"]
    slug = url.rstrip("/").removesuffix(".git").split("github.com/")[-1]
    for path in [*WORKFLOWS, ZIZMOR_CONFIG]:
        text = path.read_text(encoding="utf-8")
        for fixed in (url, slug, "github.com", "github.io"):
            assert fixed not in text, f"{path.name} names {fixed!r}: a fork would publish " \
                "the wrong book; only _config.yml holds the repository URL"
