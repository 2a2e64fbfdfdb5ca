"""`locallab-gguf show MODEL`: what a model on this machine is, read from its GGUF header
(milliseconds, whatever the file's size; nothing is loaded)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TextIO

import msgspec

from locallab_gguf.errors import ModelUnavailable
from locallab_gguf.models.catalog import Capability, find_local, model_capabilities
from locallab_gguf.placement.gguf_facts import gguf_facts
from locallab_gguf.settings import Settings
from locallab_gguf.sizes import format_bytes

# Of the chat template, the text view shows the start; --json gives it whole.
TEMPLATE_LINES = 6
TEMPLATE_LINE_CHARS = 100


class ModelCard(msgspec.Struct, frozen=True, kw_only=True):
    """What `show --json` prints."""

    id: str
    name: str
    kind: str
    path: str
    local: Literal["package", "cache"]
    size_bytes: int
    architecture: str
    gguf_name: str
    parameters: int
    parameter_size: str  # as people write it: 135M, 8B
    quantization: str
    context_length: int  # what the model was trained for
    context_configured: int | None  # models.toml's or --ctx; None: decided at load (auto)
    embedding_length: int
    layers: int
    chat_template: str | None
    chat_template_source: Literal["registry", "gguf"] | None
    capabilities: list[Capability]


def model_card(settings: Settings, env: Mapping[str, str], model_id: str) -> ModelCard:
    spec, files, path = find_local(settings, env, model_id)
    if path is None:
        raise ModelUnavailable(
            f"model {spec.id!r} is not on this machine, and `show` reads the file's header; "
            f"download it with `locallab-gguf pull {spec.id}`"
        )
    facts = gguf_facts(path)
    # The registry's template beats the file's, as when the server loads the model.
    template = spec.chat_template or facts.chat_template
    source: Literal["registry", "gguf"] | None = (
        "registry" if spec.chat_template else "gguf" if facts.chat_template else None
    )
    return ModelCard(
        id=spec.id,
        name=spec.name,
        kind=spec.kind,
        path=str(path),
        local="package" if files.is_packaged(spec, path) else "cache",
        size_bytes=facts.file_size,
        architecture=facts.architecture,
        gguf_name=facts.name,
        parameters=facts.parameter_count,
        parameter_size=facts.parameter_size,
        quantization=facts.quantization,
        context_length=facts.context_length,
        context_configured=spec.context_length
        or (settings.ctx if isinstance(settings.ctx, int) else None),
        embedding_length=facts.embedding_length,
        layers=facts.block_count,
        chat_template=template,
        chat_template_source=source,
        capabilities=model_capabilities(spec, template),
    )


def show(
    settings: Settings,
    env: Mapping[str, str],
    model_id: str,
    out: TextIO,
    *,
    as_json: bool = False,
) -> None:
    card = model_card(settings, env, model_id)
    if as_json:
        out.write(msgspec.json.encode(card).decode() + "\n")
    else:
        out.write(render(card))


def render(card: ModelCard) -> str:
    configured = (
        f"; served with {card.context_configured:,}"
        if card.context_configured is not None
        else "; the server sizes it at load"
    )
    rows = [
        ("Model", f"{card.id} ({card.name})"),
        ("File", f"{card.path} ({card.local}, {format_bytes(card.size_bytes)})"),
        ("Architecture", card.architecture + (f" ({card.gguf_name})" if card.gguf_name else "")),
        ("Parameters", f"{card.parameter_size} ({card.parameters:,})"),
        ("Quantization", card.quantization),
        ("Context", f"{card.context_length:,} tokens trained{configured}"),
        ("Embedding", f"{card.embedding_length:,} dimensions"),
        ("Layers", str(card.layers)),
        ("Kind", card.kind),
        ("Capabilities", ", ".join(card.capabilities)),
    ]
    width = max(len(label) for label, _ in rows) + 2
    text = "".join(f"{label:<{width}}{value}\n" for label, value in rows)
    return text + _template_section(card)


def _template_section(card: ModelCard) -> str:
    if card.chat_template is None:
        return "\nChat template: none (a base model: it completes text, it does not chat)\n"
    lines = card.chat_template.strip("\n").splitlines()
    shown = lines[:TEMPLATE_LINES]
    source = "models.toml" if card.chat_template_source == "registry" else "the GGUF file"
    head = f"\nChat template (from {source}, {len(card.chat_template):,} characters):\n"
    body = "".join(f"  {_clipped(line)}\n" for line in shown)
    if len(lines) > len(shown):
        body += f"  ... {len(lines) - len(shown)} more lines (--json shows it whole)\n"
    return head + body


def _clipped(line: str) -> str:
    return line if len(line) <= TEMPLATE_LINE_CHARS else line[: TEMPLATE_LINE_CHARS - 3] + "..."
