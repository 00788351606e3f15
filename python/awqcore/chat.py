"""Chat prompts: a model's chat template rendered as transformers renders it."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Model


def render_chat(template: str, messages: list[dict], bos_token: str, eos_token: str,
                add_generation_prompt: bool = True) -> str:
    """Renders `messages` with the model's chat template (the assistant's generation
    prompt added unless add_generation_prompt is False) the way transformers'
    apply_chat_template does (same jinja2 settings).

    jinja2 is required: hand-rendering ChatML is not equivalent, because real
    templates add more than the markers (SmolLM2's and Qwen2's insert a default
    system prompt when the conversation has none).
    """
    if not template:
        raise ValueError("this model has no chat template; run without --chat")
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ValueError("--chat needs jinja2 to render the model's chat template "
                         "(pip install jinja2)") from None

    def raise_exception(message: str):
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages,
                                                add_generation_prompt=add_generation_prompt,
                                                bos_token=bos_token, eos_token=eos_token)
    except jinja2.TemplateError as e:
        raise ValueError(f"chat template cannot be rendered: {e}") from None


def chat_prompt_ids(model: "Model", messages: list[dict]) -> list[int]:
    """The token ids of the conversation `messages` ({"role", "content"} dicts) in
    the model's chat template, ready for the assistant's reply."""
    from .chat_format import special_token_texts

    c = model.config
    bos, eos = special_token_texts(model.tokenizer, c.get("bos_token_id", -1),
                                   c.get("eos_token_ids") or [])
    text = render_chat(model.chat_template, messages, bos_token=bos, eos_token=eos)
    # The template already wrote the special tokens (BOS included) as text.
    return model.tokenizer.encode(text, add_special_tokens=False).ids
