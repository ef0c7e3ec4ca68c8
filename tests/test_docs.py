"""Docs that cannot drift from the code: docs/training.md's key table is generated from the config schema, and
every config key the pages name exists."""
import re

import pytest

from helpers import ROOT

TRAINING_MD = ROOT / "docs" / "training.md"
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
# names that look like config keys in the pages but are something else
NOT_KEYS = {"tracking.run_params": "a function of launch/tracking.py",
            "model.in_chans": "an MLflow param of the built model, resolved from the data",
            "deepspeed.initialize": "DeepSpeed's API"}


def test_the_key_table_of_training_md_is_the_schema_s():
    from dynconv.launch.config_docs import REGENERATE, current_table, markdown_table

    assert current_table(TRAINING_MD) == markdown_table(), \
        f"docs/training.md's key table differs from launch/config.py's schema: regenerate it with `{REGENERATE}`"


def test_the_table_has_every_key_with_its_default_and_a_description():
    from dynconv.launch.config import Config, known_keys, key_table
    from dynconv.launch.config_docs import current_table

    rows = key_table()
    assert [r[0] for r in rows] == known_keys()
    missing = [key for key, _, _, doc in rows if not doc.strip()]
    assert not missing, f"config keys without a description (D(default, '...') in launch/config.py): {missing}"
    table = current_table(TRAINING_MD)
    for key in ("data.decoder", "model.fill_rescale", "train.log_every_steps", "train.teacher", "train.distill_alpha",
                "train.distill_temperature", "train.ema_decay", "train.ema_final", "run.tags", "model.calibrate"):
        assert f"`{key}`" in table, key
    # the defaults are the schema's own: data.augment.where is auto (the page once said device)
    assert Config().data.augment.where == "auto"
    assert "| `data.augment.where` | `auto\\|device\\|loader` | `auto` |" in table


def test_every_config_key_a_page_names_exists():
    """`section.key` or `section.key=value` in a page's inline code is a key of the schema (or one that moved)."""
    from dynconv.launch.config import MOVED_KEYS, key_table

    rows = key_table()
    keys, dicts = {r[0] for r in rows}, [r[0] for r in rows if r[1].startswith("dict")]
    sections = sorted({k.split(".")[0] for k in keys})
    looks_like_key = re.compile(rf"(?:{'|'.join(sections)})\.[a-z_][a-z0-9_.]*")
    unknown = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code blocks: commands
        for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text):
            name = span.split("=")[0]
            if not looks_like_key.fullmatch(name) or re.search(r"\.(pt|json|md|ya?ml|beton|log|png|svg|csv)$", name):
                continue  # a file name such as eval.json
            if name in keys or name in MOVED_KEYS or name in NOT_KEYS or any(name.startswith(d + ".") for d in dicts):
                continue
            unknown.append(f"{page.relative_to(ROOT)}: {span}")
    assert not unknown, f"config keys the schema does not have: {unknown}"


def test_the_regenerate_command_writes_and_checks(tmp_path, capsys):
    from dynconv.launch.config_docs import BEGIN, END, main, markdown_table

    page = tmp_path / "page.md"
    page.write_text(f"intro\n\n{BEGIN}\n| stale |\n{END}\n\nafter\n")
    assert main(["--check", str(page)]) == 1
    assert "python -m dynconv.launch.config_docs --write docs/training.md" in capsys.readouterr().err
    assert main(["--write", str(page)]) == 0
    assert page.read_text() == f"intro\n\n{BEGIN}\n{markdown_table()}\n{END}\n\nafter\n"
    assert main(["--check", str(page)]) == 0
    page.write_text("no markers\n")
    assert main(["--write", str(page)]) == 2 and "keys:begin" in capsys.readouterr().err


@pytest.mark.parametrize("width", [100, 80, 60])
def test_the_key_listing_of_train_help_fits_the_width(width):
    from dynconv.launch.config import key_table, known_keys
    from dynconv.launch.config_docs import help_text

    text = help_text(width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert all(re.search(rf"^  {re.escape(k)}(\s|$)", text, re.M) for k in known_keys())
    # a long list of choices wraps after a |, never inside a name
    typ = next(t for k, t, *_ in key_table() if k == "dropout.kind")
    entry = re.search(r"^  dropout\.kind\s(.*?)^  \S", text, re.M | re.S).group(1)
    assert f"{typ} = uniform_subsets" in re.sub(r"\|\s+", "|", " ".join(entry.split()))
