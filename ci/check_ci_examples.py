"""Checks the CI examples of docs/ci/ (a GitHub Actions workflow and a
GitLab CI file) the way CI would read them, without a CI service:

- each file validates against its service's official JSON schema
  (check-jsonschema's vendored `vendor.github-workflows` and
  `vendor.gitlab-ci`);
- every command they run exists: a script path is an executable file of
  this repository, `cargo xxvm SUB --opt` names a subcommand and options
  that `xxvm SUB --help` lists, `cargo nextest run ...` is run here as
  `cargo nextest list ...` with each runner's values substituted, and any
  other command is a tool of the CI image named in SYSTEM_TOOLS;
- the runners' partitions split the tests for real: every runner gets at
  least one test, no test runs on two runners, and together they run
  exactly the tests of the same command without `--partition`;
- the JUnit file a job uploads is the one its nextest profile writes
  (.config/nextest.toml), and the nextest version it installs meets that
  file's `nextest-version`.

`--self-test` also checks that broken copies of the two files fail: a
check that cannot fail proves nothing.

Run by ci/check-ci-examples, which provides check-jsonschema (and the
ruamel.yaml it brings) in a virtual environment.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
GITHUB = ROOT / "docs/ci/github-workflow.yml"
GITLAB = ROOT / "docs/ci/gitlab-ci.yml"
NEXTEST_CONFIG = ROOT / ".config/nextest.toml"

# Commands the examples may run that are not part of this repository:
# tools of the CI image (rust:1-bookworm) and shell built-ins.
SYSTEM_TOOLS = {
    "apt-get", "cat", "cd", "curl", "echo", "export", "ls", "mkdir",
    "rustup", "tar", "test", "true",
}
# Cargo subcommands other than xxvm, nextest and install (checked apart).
CARGO_PLAIN = {"build", "fetch", "test", "run"}
SHELL_OPERATORS = {"&&", "||", ";", "|"}


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


@dataclass
class Job:
    """One job of a CI file: its runners' variables and its commands."""

    where: str
    # One dict of substitutions per runner the job fans out to.
    runners: list[dict[str, str]]
    # (what, script text) with `${{ }}`/`$VAR` left for substitution.
    scripts: list[tuple[str, str]]
    # JUnit files the job hands to the service.
    junit: list[str]
    # nextest versions the job installs.
    nextest_versions: list[str] = field(default_factory=list)


class Checker:
    def __init__(self, nextest: bool, verbose: bool = True):
        self.nextest = nextest
        self.verbose = verbose
        self.passed = 0
        self.failed: list[str] = []
        self._list_cache: dict[tuple[str, ...], tuple[int, list[str], str]] = {}
        self._help_cache: dict[tuple[str, ...], tuple[int, str]] = {}
        config = tomllib.loads(NEXTEST_CONFIG.read_text())
        self.nextest_config = config
        required = config.get("nextest-version", {})
        if isinstance(required, dict):
            required = required.get("required", "0")
        self.nextest_required = version_tuple(str(required))

    def ok(self, what: str) -> None:
        self.passed += 1
        if self.verbose:
            print(f"ok: {what}")

    def fail(self, what: str) -> None:
        self.failed.append(what)
        if self.verbose:
            print(f"FAIL: {what}")

    def check(self, cond: bool, what: str, why: str = "") -> bool:
        if cond:
            self.ok(what)
        else:
            self.fail(f"{what}{': ' + why if why else ''}")
        return cond

    # --- the schemas ------------------------------------------------------

    def schema(self, path: Path, schema: str) -> None:
        exe = Path(sys.executable).parent / "check-jsonschema"
        out = subprocess.run(
            [str(exe), "--builtin-schema", schema, str(path)],
            capture_output=True, text=True,
        )
        self.check(
            out.returncode == 0,
            f"{path.name} validates against {schema}",
            (out.stdout + out.stderr).strip(),
        )

    # --- the files' jobs --------------------------------------------------

    def github_jobs(self, path: Path) -> list[Job]:
        doc = YAML(typ="safe").load(path.read_text())
        jobs = []
        for name, job in (doc.get("jobs") or {}).items():
            matrix = (job.get("strategy") or {}).get("matrix") or {}
            if any(k in matrix for k in ("include", "exclude")):
                self.fail(f"{path.name}: job {name}: matrix include/exclude is not checked here")
                continue
            keys = list(matrix)
            combos = [dict(zip(keys, vals)) for vals in itertools.product(*(matrix[k] for k in keys))]
            combos = combos or [{}]
            runners = []
            for i, combo in enumerate(combos):
                subs = {f"matrix.{k}": str(v) for k, v in combo.items()}
                subs["strategy.job-total"] = str(len(combos))
                subs["strategy.job-index"] = str(i)
                runners.append(subs)
            scripts, junit, versions = [], [], []
            for step in job.get("steps") or []:
                label = step.get("name") or step.get("uses") or "step"
                if "run" in step:
                    scripts.append((f"{path.name}: {name}: {label}", str(step["run"])))
                uses = str(step.get("uses", ""))
                with_ = step.get("with") or {}
                if uses.startswith("actions/upload-artifact") and "junit" in str(with_.get("path", "")):
                    junit.append(str(with_["path"]).strip())
                if uses.startswith("taiki-e/install-action"):
                    for tool in str(with_.get("tool", "")).split(","):
                        tool = tool.strip()
                        if tool.startswith(("cargo-nextest", "nextest")):
                            versions.append(tool.partition("@")[2] or "latest")
            jobs.append(Job(f"{path.name}: {name}", runners, scripts, junit, versions))
        return jobs

    def gitlab_jobs(self, path: Path) -> list[Job]:
        doc = YAML(typ="safe").load(path.read_text())
        jobs = []
        for name, job in doc.items():
            if not isinstance(job, dict) or "script" not in job:
                continue
            parallel = job.get("parallel", 1)
            if not isinstance(parallel, int):
                self.fail(f"{path.name}: job {name}: parallel: {parallel!r} is not checked here")
                continue
            runners = [
                {"CI_NODE_INDEX": str(i), "CI_NODE_TOTAL": str(parallel)}
                for i in range(1, parallel + 1)
            ]
            variables = {k: str(v) for k, v in (job.get("variables") or {}).items()}
            variables.setdefault("CI_PROJECT_DIR", str(ROOT))
            for r in runners:
                r.update(variables)
            scripts = []
            for part in ("before_script", "script", "after_script"):
                lines = job.get(part) or []
                if isinstance(lines, str):
                    lines = [lines]
                for line in lines:
                    scripts.append((f"{path.name}: {name}: {part}", str(line)))
            junit = (((job.get("artifacts") or {}).get("reports") or {}).get("junit")) or []
            if isinstance(junit, str):
                junit = [junit]
            jobs.append(Job(f"{path.name}: {name}", runners, scripts, [str(j) for j in junit]))
        return jobs

    # --- commands -----------------------------------------------------------

    @staticmethod
    def substitute(script: str, subs: dict[str, str]) -> str:
        def expr(m: re.Match) -> str:
            key = m.group(1).strip()
            return subs.get(key, m.group(0))

        script = re.sub(r"\$\{\{(.*?)\}\}", expr, script)

        def var(m: re.Match) -> str:
            key = m.group(1) or m.group(2)
            return subs.get(key, m.group(0))

        return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", var, script)

    @staticmethod
    def commands(script: str) -> list[list[str]]:
        text = script.replace("\\\n", " ")
        out = []
        for line in text.splitlines():
            words = shlex.split(line, comments=True)
            cmd: list[str] = []
            for w in words + [";"]:
                if w in SHELL_OPERATORS:
                    if cmd:
                        out.append(cmd)
                    cmd = []
                else:
                    cmd.append(w)
        # Leading VAR=value assignments are the command's environment.
        trimmed = []
        for cmd in out:
            while cmd and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", cmd[0]):
                cmd = cmd[1:]
            if cmd:
                trimmed.append(cmd)
        return trimmed

    def xxvm_help(self, sub: str | None) -> tuple[int, str]:
        key = (sub or "",)
        if key not in self._help_cache:
            argv = ["cargo", "xxvm"] + ([sub] if sub else []) + ["--help"]
            out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
            self._help_cache[key] = (out.returncode, out.stdout + out.stderr)
        return self._help_cache[key]

    def nextest_list(self, args: list[str]) -> tuple[int, list[str], str]:
        key = tuple(args)
        if key not in self._list_cache:
            argv = ["cargo", "nextest", "list", "--cargo-quiet", "--message-format", "oneline"] + args
            out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
            tests = [line for line in out.stdout.splitlines() if line.strip()]
            self._list_cache[key] = (out.returncode, tests, out.stderr.strip())
        return self._list_cache[key]

    def check_command(self, where: str, cmd: list[str]) -> None:
        shown = shlex.join(cmd)
        word = cmd[0]
        if "/" in word and not word.startswith("/"):
            path = ROOT / word
            self.check(
                path.is_file() and os.access(path, os.X_OK),
                f"{where}: `{shown}`: {word} is an executable of this repository",
                "missing or not executable",
            )
            return
        if word != "cargo":
            self.check(
                word in SYSTEM_TOOLS,
                f"{where}: `{shown}`: {word} is a tool of the CI image",
                "neither in this repository nor in SYSTEM_TOOLS",
            )
            return
        sub = cmd[1] if len(cmd) > 1 else ""
        if sub == "xxvm":
            self.check_xxvm(where, cmd[2:])
        elif sub == "nextest":
            pass  # run per runner, in check_job
        elif sub == "install":
            crate = [w for w in cmd[2:] if not w.startswith("-")]
            self.check(
                crate[:1] == ["cargo-nextest"],
                f"{where}: `{shown}` installs cargo-nextest",
                "only cargo-nextest is expected",
            )
        else:
            self.check(sub in CARGO_PLAIN, f"{where}: `{shown}`: cargo {sub} is a known subcommand")

    def check_xxvm(self, where: str, args: list[str]) -> None:
        shown = shlex.join(["cargo", "xxvm"] + args)
        if not args or args[0].startswith("-"):
            self.fail(f"{where}: `{shown}`: no xxvm subcommand")
            return
        sub = args[0]
        rc, text = self.xxvm_help(sub)
        if not self.check(rc == 0, f"{where}: `{shown}`: xxvm has the subcommand {sub}", text[-500:]):
            return
        own = args[1 : args.index("--")] if "--" in args else args[1:]
        for opt in (a.split("=", 1)[0] for a in own if a.startswith("--")):
            self.check(
                re.search(rf"(^|[\s,]){re.escape(opt)}([\s=<,]|$)", text, re.M) is not None,
                f"{where}: `{shown}`: xxvm {sub} has the option {opt}",
                "not in its --help",
            )

    # --- a job --------------------------------------------------------------

    def junit_path(self, profile: str) -> str | None:
        config = self.nextest_config
        junit = ((config.get("profile") or {}).get(profile) or {}).get("junit") or {}
        if "path" not in junit:
            return None
        store = (config.get("store") or {}).get("dir", "target/nextest")
        return f"{store}/{profile}/{junit['path']}"

    def check_job(self, job: Job) -> None:
        for version in job.nextest_versions:
            self.check(
                version != "latest" and version_tuple(version) >= self.nextest_required,
                f"{job.where}: installs cargo-nextest {version}, at least the required "
                + ".".join(map(str, self.nextest_required)),
            )
        # Commands, with the first runner's values: they are the same
        # commands on every runner but for the partition.
        runs: dict[str, list[list[str]]] = {}
        for what, script in job.scripts:
            for cmd in self.commands(self.substitute(script, job.runners[0])):
                self.check_command(what, cmd)
                if cmd[:3] == ["cargo", "install", "cargo-nextest"] and "--version" in cmd:
                    v = cmd[cmd.index("--version") + 1]
                    self.check(
                        version_tuple(v) >= self.nextest_required,
                        f"{what}: installs cargo-nextest {v}, at least the required "
                        + ".".join(map(str, self.nextest_required)),
                    )
                if cmd[:3] == ["cargo", "nextest", "run"]:
                    runs.setdefault(what, [])
        # Each `cargo nextest run`, on every runner.
        for what, script in job.scripts:
            per_runner = [
                [c for c in self.commands(self.substitute(script, r)) if c[:3] == ["cargo", "nextest", "run"]]
                for r in job.runners
            ]
            for index in range(len(per_runner[0])):
                self.check_nextest(what, job, [cmds[index] for cmds in per_runner])

    def check_nextest(self, where: str, job: Job, cmds: list[list[str]]) -> None:
        args0 = cmds[0][3:]
        profile = args0[args0.index("--profile") + 1] if "--profile" in args0 else "default"
        junit = self.junit_path(profile)
        self.check(
            junit is not None,
            f"{where}: nextest profile {profile} writes a JUnit report",
            f"[profile.{profile}.junit] has no path in .config/nextest.toml",
        )
        if junit is not None:
            self.check(
                junit in job.junit,
                f"{where}: the job hands on {junit}, the JUnit file of profile {profile}",
                f"it hands on {job.junit or 'none'}",
            )
        if not self.nextest:
            if self.verbose:
                print(f"skip: {where}: cargo-nextest (at least the required version) is not "
                      "installed: its command lines were not run")
            return
        shards = []
        for cmd in cmds:
            args = cmd[3:]
            rc, tests, err = self.nextest_list(args)
            if not self.check(rc == 0, f"{where}: `{shlex.join(['cargo', 'nextest', 'list'] + args)}` works",
                              err[-800:]):
                return
            shards.append((args, tests))
        if "--partition" not in args0:
            self.check(bool(shards[0][1]), f"{where}: selects at least one test")
            return
        i = args0.index("--partition")
        whole_args = args0[:i] + args0[i + 2 :]
        rc, whole, err = self.nextest_list(whole_args)
        if not self.check(rc == 0, f"{where}: the same command without --partition lists", err[-800:]):
            return
        parts = [a[a.index("--partition") + 1] for a, _ in shards]
        counts = ", ".join(f"{p}: {len(t)}" for p, t in zip(parts, (t for _, t in shards)))
        if self.verbose:
            print(f"info: {where}: {len(whole)} tests; {counts}")
        self.check(bool(whole), f"{where}: selects at least one test")
        for part, (_, tests) in zip(parts, shards):
            self.check(bool(tests), f"{where}: runner {part} gets at least one test")
        seen: dict[str, str] = {}
        twice = []
        for part, (_, tests) in zip(parts, shards):
            for t in tests:
                if t in seen:
                    twice.append(f"{t} ({seen[t]} and {part})")
                seen[t] = part
        self.check(not twice, f"{where}: no test runs on two runners", "; ".join(twice[:5]))
        missing = sorted(set(whole) - set(seen))
        extra = sorted(set(seen) - set(whole))
        self.check(
            not missing and not extra,
            f"{where}: the runners together run all {len(whole)} tests",
            f"never run: {missing[:5]}; not in the whole: {extra[:5]}",
        )

    def run(self, github: Path, gitlab: Path) -> None:
        self.schema(github, "vendor.github-workflows")
        self.schema(gitlab, "vendor.gitlab-ci")
        for job in self.github_jobs(github) + self.gitlab_jobs(gitlab):
            self.check_job(job)


def nextest_usable() -> bool:
    out = subprocess.run(
        ["cargo", "nextest", "show-config", "version"], cwd=ROOT, capture_output=True, text=True
    )
    return out.returncode == 0


# Broken copies of the files, each of which the check must refuse:
# (file, text to replace, replacement, what is broken). Those marked in
# NEEDS_NEXTEST are refused only by running nextest.
MUTATIONS = [
    ("github", "    runs-on: ubuntu-24.04\n", "", "a job without runs-on (schema)"),
    ("gitlab", "  parallel: 3\n", "  parallel: three\n", "parallel: three (schema)"),
    ("github", "run: ci/crossings-plugin/build-test-artifacts.sh",
     "run: ci/crossings-plugin/no-such-script.sh", "a script the repository does not have"),
    ("gitlab", "cargo xxvm exec --accel auto", "cargo xxvm exec --accelerator auto",
     "an option xxvm exec does not have"),
    ("gitlab", "cargo xxvm build", "cargo xxvm bild", "a subcommand xxvm does not have"),
    ("github", "slice:${{ matrix.slice }}/", "slice:1/", "every runner runs the same slice"),
    ("gitlab", "/${CI_NODE_TOTAL}", "/4", "four slices for three runners"),
    ("github", "path: target/nextest/ci/junit.xml", "path: target/nextest/default/junit.xml",
     "an upload of a JUnit file the profile does not write"),
    ("github", "--profile ci", "--profile default", "a profile without a JUnit report"),
    ("gitlab", "--version 0.9.143", "--version 0.9.100", "a nextest too old for slice partitions"),
]


NEEDS_NEXTEST = {"every runner runs the same slice", "four slices for three runners"}


def self_test(nextest: bool) -> tuple[int, int]:
    """Checks each of MUTATIONS; returns how many were refused and how many
    passed the check (or could not be applied)."""
    refused, failures = 0, 0
    base = {"github": GITHUB.read_text(), "gitlab": GITLAB.read_text()}
    checker = Checker(nextest, verbose=False)
    with tempfile.TemporaryDirectory(prefix="ci-examples-") as tmp:
        for which, old, new, what in MUTATIONS:
            if not nextest and what in NEEDS_NEXTEST:
                print(f"skip: self-test: {what} (needs cargo-nextest)")
                continue
            texts = dict(base)
            if old not in texts[which]:
                print(f"FAIL: self-test: {what}: {old!r} is not in the {which} file")
                failures += 1
                continue
            texts[which] = texts[which].replace(old, new)
            paths = {}
            for k, name in (("github", GITHUB.name), ("gitlab", GITLAB.name)):
                paths[k] = Path(tmp) / name
                paths[k].write_text(texts[k])
            checker.passed, checker.failed = 0, []
            checker.run(paths["github"], paths["gitlab"])
            if checker.failed:
                print(f"ok: self-test: {what} is refused ({checker.failed[0][:160]})")
                refused += 1
            else:
                print(f"FAIL: self-test: {what} passed the check")
                failures += 1
    return refused, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--github", type=Path, default=GITHUB)
    parser.add_argument("--gitlab", type=Path, default=GITLAB)
    parser.add_argument("--self-test", action="store_true",
                        help="also check that broken copies of the files are refused")
    args = parser.parse_args()
    nextest = nextest_usable()
    if not nextest:
        print("note: cargo-nextest (at least the version .config/nextest.toml requires) is not "
              "installed: the nextest command lines are not run")
    checker = Checker(nextest)
    checker.run(args.github, args.gitlab)
    passed, failed = checker.passed, len(checker.failed)
    if args.self_test:
        good, bad = self_test(nextest)
        passed += good
        failed += bad
    print(f"ci-examples: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
