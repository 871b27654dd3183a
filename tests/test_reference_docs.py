"""docs/cli.md and docs/configuration.md are generated from the code; the committed pages must match."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_reference", ROOT / "docs" / "generate_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_reference_pages_are_what_the_generator_writes():
    generator = load_generator()
    generated = generator.pages()
    assert set(generated) == {Path("docs/cli.md"), Path("docs/configuration.md")}
    stale = generator.stale(generated)
    assert not stale, "\n".join(f"{path} is stale: run python docs/generate_reference.py" for path in stale)


def test_every_field_and_every_command_is_on_its_page():
    generator = load_generator()
    from hyperiqa.config import TrainConfig, field_docs

    configuration = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name, doc in field_docs().items():
        assert f"| `{name}` |" in configuration
        assert doc.replace("|", "\\|") in configuration
    assert len(field_docs()) == len(TrainConfig.__dataclass_fields__)
    cli = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for shown, *_ in generator.USER_COMMANDS + generator.DEVELOPER_COMMANDS:
        assert f"### {shown}\n" in cli
    assert str(ROOT) not in cli + configuration
