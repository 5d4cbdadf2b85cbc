"""CI's package selection (.ci/packages.py): a change selects the packages whose sessions test it."""

from __future__ import annotations

import sys
from pathlib import Path

CI = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CI))

import packages  # noqa: E402
from noxfile import Package  # noqa: E402

TABLE = {
    "data": Package("data"),
    "ckpt": Package("ckpt"),
    "ops": Package("ops", consumers=("model",)),
    "model": Package("model"),
    "train": Package("train", needs=("data", "model", "ckpt"), test_with=("ops",)),
    "infer": Package("infer", needs=("data", "ckpt", "model")),
    "serve": Package("serve", needs=("infer",)),
}


def test_a_leaf_selects_only_itself():
    assert packages.with_dependents({"serve"}, TABLE) == ["serve"]


def test_dependents_are_selected_transitively():
    assert packages.with_dependents({"ckpt"}, TABLE) == ["ckpt", "train", "infer", "serve"]


def test_a_package_whose_session_runs_the_changed_suite_is_selected():
    # ops' session runs model's suite with ops installed: a change in model must rerun it.
    assert packages.with_dependents({"model"}, TABLE) == ["ops", "model", "train", "infer", "serve"]


def test_a_provider_selects_the_packages_whose_tests_install_it():
    # ops' session runs model's suite (a consumer does not select its provider); train's tests
    # install ops for the configuration matrix, so a change in ops reruns them.
    assert packages.with_dependents({"ops"}, TABLE) == ["ops", "train"]
