"""Settings are declared once (reconciler/service/settings.py): flags, variables and docs/settings.md follow."""
from __future__ import annotations

import argparse
from pathlib import Path

from reconciler.commands.cli import parser
from reconciler.service import settings
from reconciler.service.config import load

ROOT = Path(__file__).resolve().parents[2]
# Settings with no flag, on purpose: a secret would show in a process list, the clusters are a YAML mapping; the
# other two have never had one (a flag is a change of its own).
WITHOUT_FLAG = {"webhook_secret", "clusters", "installation_key_file", "verify_allow_rewrite"}


def run_parser() -> argparse.ArgumentParser:
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["run"]


def test_docs_settings_md_is_what_the_declarations_make() -> None:
    assert (ROOT / "docs" / "settings.md").read_text() == settings.markdown(), (
        "docs/settings.md is stale: python -m reconciler.service.settings > docs/settings.md")


def test_every_setting_has_help_a_variable_and_a_flag_unless_it_says_why_not() -> None:
    declared = list(settings.declared())
    assert {each.name for each, how in declared if settings.flag(each.name, how) is None} == WITHOUT_FLAG
    for each, how in declared:
        assert how.help and how.meaning(), each.name
        assert settings.env_var(each.name) == "RAY_GITOPS_" + each.name.upper()


def test_every_setting_is_in_exactly_one_group_and_run_help_lists_the_groups() -> None:
    grouped = [name for names in settings.GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(each.name for each, _ in settings.declared())  # each once, none left out
    text = run_parser().format_help()
    assert [group for group in settings.GROUPS if f"{group} settings:" in text] == list(settings.GROUPS)
    assert all(f"## {group}" in settings.markdown() for group in settings.GROUPS)


def test_run_takes_every_declared_flag_and_lists_the_visible_ones_with_help() -> None:
    run = run_parser()
    by_flag = {option: action for action in run._actions for option in action.option_strings}
    text = run.format_help()
    for each, how in settings.declared():
        option = settings.flag(each.name, how)
        if option is None:
            continue
        assert by_flag[option].dest == each.name
        assert (option in text) is not how.hidden, option
        assert by_flag[option].help == (argparse.SUPPRESS if how.hidden else how.help)


def test_a_flag_not_given_leaves_the_variable_and_the_default() -> None:
    args = vars(run_parser().parse_args([]))
    got = load(args, {"RAY_GITOPS_CONCURRENCY": "7", "RAY_GITOPS_VERIFY_ALLOW_REWRITE": "yes"})
    assert (got.concurrency, got.verify_allow_rewrite, got.branch, got.once) == (7, True, "main", False)
    assert load(vars(run_parser().parse_args(["--concurrency", "2", "--once"])),
                {"RAY_GITOPS_CONCURRENCY": "7"}).concurrency == 2
