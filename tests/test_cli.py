"""The one command, ``lungseg`` (lungseg_utils.cli), and the one error handler behind it.

The installed scripts answer ``--help``; every subcommand shows its own module's help under
its own name; bad input is one line ``error: ...`` and exit code 2, never a traceback; and
what the README, the Makefile and the notebooks tell people to type exists: each profile,
subcommand, module and option. The processes run in parallel, once (``scripts``); each
document checker also runs on a tiny example that must fail, so that it cannot go blind.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from lungseg_utils import cli, config
from lungseg_utils.errors import LungsegInputError
from lungseg_utils.runs.command import run_command

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "Makefile",
        *sorted((ROOT / "notebooks").glob("*.py")), *sorted((ROOT / "app").glob("*.py"))]


# ----------------------------------------------------------------------------- processes
@pytest.fixture(scope="module")
def scripts(tmp_path_factory):
    """``{name: CompletedProcess-like (returncode, stdout, stderr)}`` of every command line
    this file runs, started together (one TensorFlow import's wall time in all)."""
    missing = tmp_path_factory.mktemp("cli") / "no_such_ct.nii.gz"
    runs = {f"{name} --help": [str(BIN / name), "--help"] for name in SCRIPTS}
    runs.update({
        "lungseg": [str(BIN / "lungseg")],
        "lungseg segment missing": [str(BIN / "lungseg"), "segment", "--input", str(missing),
                                    "--output_mask", str(missing.with_name("m.nii.gz"))],
        "-m lungseg_utils --help": [sys.executable, "-m", "lungseg_utils", "--help"],
        "-m lungseg_utils.inference --help": [sys.executable, "-m", "lungseg_utils.inference",
                                              "--help"],
        "root imports": [sys.executable, "-c",
                         "import sys, lungseg_utils.cli as c; c.build_parser().format_help(); "
                         "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"],
    })
    procs = {k: subprocess.Popen(v, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, v in runs.items()}
    done = {}
    for k, p in procs.items():
        out, err = p.communicate(timeout=300)
        done[k] = subprocess.CompletedProcess(runs[k], p.returncode, out, err)
    return done


def test_every_installed_script_answers_help(scripts):
    assert "lungseg" in SCRIPTS and SCRIPTS["lungseg"] == "lungseg_utils.cli:entry"
    for name, target in SCRIPTS.items():
        module, func = target.split(":")
        # an install older than pyproject.toml would run another function: reinstall
        assert f"from {module} import {func}" in (BIN / name).read_text(), name
        r = scripts[f"{name} --help"]
        assert r.returncode == 0, (name, r.stderr[-2000:])
        assert r.stdout.startswith("usage: "), name
    r = scripts["-m lungseg_utils --help"]
    assert r.returncode == 0 and r.stdout.startswith("usage: lungseg ")
    assert all(name in r.stdout for name in cli.COMMANDS)
    r = scripts["-m lungseg_utils.inference --help"]
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m lungseg_utils.inference")


def test_the_root_command_imports_no_tensorflow(scripts):
    r = scripts["root imports"]
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_lungseg_without_a_command_prints_help_and_exits_2(scripts):
    r = scripts["lungseg"]
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("usage: lungseg ") and "segment" in r.stderr


def test_bad_input_is_one_error_line_and_exit_code_2(scripts):
    r = scripts["lungseg segment missing"]
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert "no_such_ct.nii.gz: input does not exist." in lines[0]


# ----------------------------------------------------------------------------- in process
def test_root_help_lists_each_subcommand_with_its_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = "".join(capsys.readouterr().out.split())          # however argparse wraps it
    for name, (_, summary) in cli.COMMANDS.items():
        assert "".join(f"{name} {summary}".split()) in out, name
    with pytest.raises(SystemExit) as exit_:
        cli.main(["no-such-command"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_each_subcommand_shows_its_own_help_under_its_own_name(capsys):
    """``lungseg SUB --help`` is the module's help with prog ``lungseg SUB``; the root's
    one line is the first sentence of that module's description."""
    assert set(cli.COMMANDS) == {"segment", "train", "cv", "fetch", "report", "robustness",
                                 "ensemble-size", "storage", "promote", "seeds", "refine-hu",
                                 "export-ir"}
    for name, (module, summary) in cli.COMMANDS.items():
        with pytest.raises(SystemExit) as exit_:
            cli.main([name, "--help"])
        assert exit_.value.code == 0, name
        assert capsys.readouterr().out.startswith(f"usage: lungseg {name} "), name
        parser = importlib.import_module(f"lungseg_utils.{module}").build_parser()
        assert cli.first_sentence(parser.description) == summary, name
    with pytest.raises(SystemExit) as exit_:
        cli.main(["fetch", "lctsc", "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("usage: lungseg fetch lctsc ")


def test_help_texts_name_the_real_default_profile(capsys):
    for name in ("train", "cv"):
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"$LUNGSEG_PROFILE or {config.DEFAULT_PROFILE})" in text, name


def _parser():
    p = argparse.ArgumentParser(prog="python -m demo")
    p.add_argument("what")
    return p


def test_run_command_turns_bad_input_into_one_line(capsys):
    def run(args):
        if args.what == "bad":
            raise LungsegInputError("x.nii.gz: input does not exist.")
        if args.what == "stop":
            raise KeyboardInterrupt
        if args.what == "warn":
            warnings.warn("intensities do not look like HU", UserWarning)
        print(args.command)
        return 1

    assert run_command(_parser(), run, ["ok"]) == 1
    assert capsys.readouterr().out.strip() == "['python', '-m', 'demo', 'ok']"
    assert run_command(_parser(), run, ["bad"]) == 2
    assert capsys.readouterr().err == "error: x.nii.gz: input does not exist.\n"
    assert run_command(_parser(), run, ["stop"]) == 130
    assert capsys.readouterr().err == "interrupted\n"
    shown = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert run_command(_parser(), run, ["warn"], one_line_warnings=True) == 1
    assert capsys.readouterr().err == "warning: intensities do not look like HU\n"
    assert warnings.showwarning is shown                    # put back when the run ends
    with pytest.raises(SystemExit) as exit_:                # argparse's own errors stay
        run_command(_parser(), run, [])
    assert exit_.value.code == 2


# ----------------------------------------------------------------------------- the documents
def profile_mentions(text: str) -> list[str]:
    """Every profile named as ``--profile X``, ``--profile {X,Y}``, ``LUNGSEG_PROFILE=X`` or
    ``${LUNGSEG_PROFILE:-X}``."""
    found = []
    for m in re.finditer(r"--profile[ =]+\{?([a-z][\w,]*)|LUNGSEG_PROFILE(?:=|:-)([a-z]\w*)",
                         text):
        found += (m.group(1) or m.group(2)).split(",")
    return found


def doc_text(path: Path) -> str:
    """What people read of a file: a notebook's comment lines (its markdown, ``# ``
    dropped) and shell lines (``!...``); any other file whole."""
    text = path.read_text()
    if path.suffix != ".py":
        return text
    return "\n".join(re.sub(r"^# ?", "", line) for line in text.splitlines()
                     if line.startswith(("#", "!")))


def code_snippets(text: str, markdown: bool = True) -> list[str]:
    """The text people type: inline code spans (across line breaks), and whole lines of
    fenced blocks and ``!`` lines (a Makefile: every line), continuation lines (ending in
    ``\\``) joined, comments (`` # ...``) cut."""
    snippets, block, prose, fenced = [], [], [], not markdown
    for line in text.splitlines() + ["```"]:
        if markdown and line.lstrip().startswith("```"):
            fenced = not fenced
            snippets += [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", "\n".join(prose))]
            prose = []
        elif fenced or line.lstrip().startswith("!"):
            block.append(line.rstrip().rstrip("\\"))
            if not line.rstrip().endswith("\\"):
                snippets.append(re.split(r"\s#\s", " ".join(block))[0])
                block = []
        else:
            prose.append(line)
    return snippets


#: a command as typed: ``lungseg SUB``, ``lungseg-xxx``, ``python -m lungseg_utils[.X] [SUB]``
COMMAND = re.compile(r"(?:^|(?<=[\s/`(]))(?:lungseg\s+(?P<sub>[a-z][\w-]*)|(?P<script>lungseg-\w+)"
                     r"|-m\s+(?P<module>lungseg_utils(?:\.\w+)*)(?:\s+(?P<msub>[a-z][\w-]*))?)")


def commands(snippet: str) -> list[tuple[str, str, str]]:
    """``[(kind, name, its arguments)]`` of each command in a snippet: kind is ``sub`` (a
    ``lungseg`` subcommand), ``script`` or ``module``; the arguments run to the next
    command, ``;``, ``&&`` or ``|``."""
    found, matches = [], list(COMMAND.finditer(snippet))
    for m, after in zip(matches, matches[1:] + [None]):
        rest = re.split(r";|&&|\|", snippet[m.end():after.start() if after else None])[0]
        if m.group("sub"):
            found.append(("sub", m.group("sub"), rest))
        elif m.group("script"):
            found.append(("script", m.group("script"), rest))
        elif m.group("module") == "lungseg_utils" and m.group("msub"):
            found.append(("sub", m.group("msub"), rest))
        else:
            found.append(("module", m.group("module"), (m.group("msub") or "") + rest))
    return found


def options(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text))


def parser_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of a parser and of its subcommands' parsers."""
    found = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= parser_options(sub)
    return found


def parser_of(kind: str, name: str):
    """The parser behind a command mention, or None (a module without a command line)."""
    modules = {f"lungseg_utils.{m}" for m, _ in cli.COMMANDS.values()}
    if kind == "sub":
        module = f"lungseg_utils.{cli.COMMANDS[name][0]}"
    elif kind == "script":
        module = SCRIPTS[name].split(":")[0]
    else:
        module = {"lungseg_utils.inference": "lungseg_utils.scan.segment"}.get(name, name)
    if module == "lungseg_utils.cli":
        return cli.build_parser()
    return importlib.import_module(module).build_parser() if module in modules else None


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:                 # a parent package is missing
        return False


def option_paragraphs(text: str) -> list[tuple[str, str, str]]:
    """``[(kind, name, options text)]``: the ``--option`` code spans of the paragraph right
    after a fenced block, up to its first command, belong to the block's last command (the
    README's "Other options: ..." after its examples)."""
    found, last, fenced, para = [], None, False, None
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            para = None if fenced else []
            continue
        if fenced:
            last = (commands(line) or [last])[-1]
        elif para is not None:
            if line.strip() or not "".join(para).strip():
                para.append(line)
                continue
            spans = []
            for span in re.findall(r"`([^`]+)`", "\n".join(para)):
                if commands(span):
                    break
                spans.append(span)
            if last and spans:
                found.append((last[0], last[1], " ".join(s for s in spans if s.startswith("--"))))
            para, last = None, None
    return found


def doc_problems(path: Path, text: str) -> list[str]:
    """``"file: what"`` for each profile, subcommand, script, module or option that the
    text names and the project does not have."""
    name, problems = path.name, []
    problems += [f"{name}: no profile {p!r}" for p in profile_mentions(text)
                 if p not in config.PROFILES]
    mentions = [c for s in code_snippets(text, markdown=path.name != "Makefile")
                for c in commands(s)] + option_paragraphs(text)
    for kind, what, rest in mentions:
        if kind == "sub" and what not in cli.COMMANDS:
            problems.append(f"{name}: no subcommand 'lungseg {what}'")
        elif kind == "script" and what not in SCRIPTS:
            problems.append(f"{name}: no script {what!r} in pyproject.toml")
        elif kind == "module" and not module_exists(what):
            problems.append(f"{name}: no module {what!r}")
        else:
            parser = parser_of(kind, what)
            if parser is not None:
                problems += [f"{name}: {what} has no option {o}"
                             for o in sorted(options(rest) - parser_options(parser))]
    return problems


def test_the_documents_name_only_what_exists():
    """README.md, docs/*.md, the Makefile and the notebooks: every ``--profile X`` and
    ``LUNGSEG_PROFILE=X`` is a profile of config.PROFILES, every ``lungseg SUB`` a
    subcommand, every ``python -m lungseg_utils.X`` a module, every option shown with a
    command one of that command's options."""
    seen = [c for p in DOCS for s in code_snippets(doc_text(p), p.name != "Makefile")
            for c in commands(s)]
    assert ("module", "lungseg_utils.inference") in {c[:2] for c in seen}     # read at all
    assert any(k == "module" for k, _, _ in option_paragraphs((ROOT / "README.md").read_text()))
    problems = [p for path in DOCS for p in doc_problems(path, doc_text(path))]
    assert problems == []


def test_the_document_checker_can_fail():
    text = "\n".join([
        "Run `lungseg segmnt --input ct.nii.gz` or `lungseg segment --inptu x` with",
        "LUNGSEG_PROFILE=nosuch, `--profile {main,gone}` and `lungseg-nothing --help`.",
        "```bash",
        ".venv/bin/python -m lungseg_utils.inference --input a \\",
        "    --output_mask b --labels lr   # --not_an_option in a comment is fine",
        "python -m lungseg_utils.nosuchmodule",
        "python -m lungseg_utils.inference --input a",
        "```",
        "Other options: `--tta`, `--no_such`, then `lungseg report --no_readme` and `--k 5`.",
        "",
    ])
    assert doc_problems(Path("README.md"), text) == [
        "README.md: no profile 'nosuch'",
        "README.md: no profile 'gone'",
        "README.md: no subcommand 'lungseg segmnt'",
        "README.md: segment has no option --inptu",
        "README.md: no script 'lungseg-nothing' in pyproject.toml",
        "README.md: no module 'lungseg_utils.nosuchmodule'",
        "README.md: lungseg_utils.inference has no option --no_such",
    ]
    assert doc_problems(Path("Makefile"), "\t$(PY) -m lungseg_utils.report.build \\\n"
                                          "\t  --results_dir x --nope\n") == [
        "Makefile: lungseg_utils.report.build has no option --nope"]
