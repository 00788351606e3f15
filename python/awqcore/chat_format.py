"""A chat template reduced to fixed strings around each turn, for renderers
without a template engine (the C++ runtime's awqcore::ChatFormat).

At quantize time the model's Jinja template is rendered with sentinel messages;
the text around the sentinels gives each role's prefix and suffix, the
generation prompt, the conversation start (BOS as text, when the template
writes it) and any system prompt the template inserts by default. The derived
form is then rendered next to jinja2 for a set of conversations; the keys are
stored only when every rendering agrees. docs/format.md ("Chat format") defines
the keys and the rendering rule that `render_turns` implements.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .chat import render_chat

ROLES = ("system", "user", "assistant")
# How a system message is placed: as its own turn anywhere, as its own turn
# only first, folded into the first user turn, or rejected.
SYSTEM_MODES = ("turn", "first", "fold", "none")


class ChatFormatError(ValueError):
    """A conversation the derived format cannot render (the template rejects it too,
    or the reduced form does not cover it)."""


class NotReducible(ValueError):
    """The template's output cannot be written as fixed strings around each turn."""


@dataclass
class ChatFormat:
    start: str = ""
    prefix: dict = field(default_factory=lambda: {r: "" for r in ROLES})
    suffix: dict = field(default_factory=lambda: {r: "" for r in ROLES})
    trim: dict = field(default_factory=lambda: {r: False for r in ROLES})
    generation_prompt: str = ""
    default_system: Optional[str] = None
    system: str = "none"
    alternate: bool = False

    def metadata(self) -> dict:
        """The `chat.*` metadata keys (docs/format.md), all strings."""
        keys = {"chat.format": "turns", "chat.start": self.start,
                "chat.generation_prompt": self.generation_prompt, "chat.system": self.system,
                "chat.order": "alternate" if self.alternate else "any",
                "chat.trim": " ".join(r for r in ROLES if self.trim[r])}
        for role in ROLES:
            keys[f"chat.{role}.prefix"] = self.prefix[role]
            keys[f"chat.{role}.suffix"] = self.suffix[role]
        if self.default_system is not None:
            keys["chat.default_system"] = self.default_system
        return keys


def _strip(text: str, trim: bool) -> str:
    # jinja2's trim filter is str.strip(): Unicode whitespace at both ends.
    return text.strip() if trim else text


def render_turns(fmt: ChatFormat, messages: list[dict], add_generation_prompt: bool) -> str:
    """The conversation rendered with the reduced form: the rule C++ implements."""
    messages = list(messages)
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            raise ChatFormatError(f"message {i}: role {m.get('role')!r} is not one of "
                                  f"{', '.join(ROLES)}")
    system = None
    if messages and messages[0]["role"] == "system" and fmt.system != "none":
        system = messages.pop(0)["content"]
    if system is None:
        system = fmt.default_system
    out = fmt.start
    fold = None
    if system is not None:
        block = fmt.prefix["system"] + _strip(system, fmt.trim["system"]) + fmt.suffix["system"]
        if fmt.system == "fold":
            fold = block
        else:
            out += block
    turn = 0
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "system":
            if fmt.system != "turn":
                raise ChatFormatError(f"message {i}: this model's chat format takes a system "
                                      f"message only {'first' if fmt.system != 'none' else 'never'}")
        elif fmt.alternate and (role == "user") != (turn % 2 == 0):
            raise ChatFormatError(f"message {i}: this model's chat format needs user and "
                                  "assistant messages to alternate, starting with user")
        body = _strip(m["content"], fmt.trim[role])
        if fold is not None:
            if role != "user":
                raise ChatFormatError(f"message {i}: the system message must be followed by a "
                                      "user message (this model folds it into that turn)")
            body, fold = fold + body, None
        out += fmt.prefix[role] + body + fmt.suffix[role]
        if role != "system":
            turn += 1
    if fold is not None:
        raise ChatFormatError("the system message must be followed by a user message "
                              "(this model folds it into that turn)")
    return out + (fmt.generation_prompt if add_generation_prompt else "")


# Sentinel contents: plain ASCII words no template writes, no whitespace (so a
# trim filter leaves them alone).
S1, S2, U1, U2, A1, A2 = ("AwqSysOne", "AwqSysTwo", "AwqUserOne", "AwqUserTwo",
                          "AwqBotOne", "AwqBotTwo")
PAD = " \n\t "


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _split(text: str, sentinels: list[str]) -> list[str]:
    """The text between the sentinels, in order: len(sentinels) + 1 pieces."""
    pieces, rest = [], text
    for s in sentinels:
        if text.count(s) != 1:
            raise NotReducible(f"the message content {s!r} appears {text.count(s)} times in the "
                               "rendering, not once")
        head, found, rest = rest.partition(s)
        if not found:
            raise NotReducible("the template reorders the messages")
        pieces.append(head)
    return pieces + [rest]


def _cut_end(text: str, tail: str, what: str) -> str:
    if not text.endswith(tail):
        raise NotReducible(f"{what}: {text!r} does not end with {tail!r}")
    return text[:len(text) - len(tail)]


def _cut_start(text: str, head: str, what: str) -> str:
    if not text.startswith(head):
        raise NotReducible(f"{what}: {text!r} does not start with {head!r}")
    return text[len(head):]


def derive_chat_format(template: str, bos_token: str, eos_token: str) -> ChatFormat:
    """The reduced form of `template`, checked against jinja2 (raises NotReducible
    naming what differs)."""
    def render(messages, gen=False):
        return render_chat(template, messages, bos_token, eos_token, add_generation_prompt=gen)

    def renders(messages) -> bool:
        try:
            render(messages)
            return True
        except ValueError:
            return False

    fmt = ChatFormat()
    one = render([_msg("user", U1)])
    fmt.generation_prompt = _cut_start(render([_msg("user", U1)], gen=True), one,
                                       "the generation prompt")
    head, m1, m2, m3, tail = _split(
        render([_msg("user", U1), _msg("assistant", A1), _msg("user", U2), _msg("assistant", A2)]),
        [U1, A1, U2, A2])
    fmt.suffix["assistant"] = tail
    fmt.prefix["user"] = _cut_start(m2, tail, "between an assistant and a user message")
    fmt.suffix["user"] = _split(render([_msg("user", U1), _msg("assistant", A1), _msg("user", U2)]),
                                [U1, A1, U2])[3]
    fmt.prefix["assistant"] = _cut_start(m1, fmt.suffix["user"],
                                         "between a user and an assistant message")
    if m3 != m1:
        raise NotReducible(f"the second user-assistant boundary {m3!r} differs from the first "
                           f"{m1!r}")
    # Everything before the first user turn: start, plus a default system turn if any.
    before_user = _cut_end(head, fmt.prefix["user"], "before the first user message")
    fmt.alternate = not renders([_msg("user", U1), _msg("user", U2)])

    try:
        with_system = render([_msg("system", S1), _msg("user", U1)])
    except ValueError:
        with_system = None
    if with_system is None:
        fmt.system, fmt.start = "none", before_user
    else:
        before, between, _ = _split(with_system, [S1, U1])
        if fmt.prefix["user"] and between.endswith(fmt.prefix["user"]):
            _derive_system_turn(fmt, render, renders, before_user, before,
                                _cut_end(between, fmt.prefix["user"], "after the system message"))
        else:
            fmt.system, fmt.start = "fold", before_user
            fmt.prefix["system"] = _cut_start(before, before_user + fmt.prefix["user"],
                                              "before a folded system message")
            fmt.suffix["system"] = between
    _derive_trim(fmt, render)
    verify_chat_format(fmt, template, bos_token, eos_token)
    return fmt


def _derive_system_turn(fmt, render, renders, before_user, before, system_suffix) -> None:
    fmt.suffix["system"] = system_suffix
    # A default system turn: what precedes the first user turn without a system
    # message is start + system prefix + D + system suffix, where start + system
    # prefix is what precedes a given system message's content.
    if before_user.startswith(before) and before_user.endswith(system_suffix) \
            and len(before_user) >= len(before) + len(system_suffix):
        fmt.default_system = before_user[len(before):len(before_user) - len(system_suffix)]
        start_known = None
    else:
        start_known = before_user
    # A system message later in the conversation gives the system prefix alone.
    later = [_msg("user", U1), _msg("assistant", A1), _msg("system", S2), _msg("user", U2)]
    prefix = None
    if renders(later):
        pieces = _split(render(later), [U1, A1, S2, U2])
        candidate = _cut_start(pieces[2], fmt.suffix["assistant"], "before a later system message")
        if pieces[3] == system_suffix + fmt.prefix["user"] and before.endswith(candidate):
            prefix = candidate
    if prefix is not None:
        fmt.system, fmt.prefix["system"] = "turn", prefix
        fmt.start = before[:len(before) - len(prefix)]
    else:
        # Start and system prefix are always written together: where the split
        # falls does not change any rendering.
        fmt.system = "first"
        fmt.start = start_known if start_known is not None else ""
        fmt.prefix["system"] = _cut_start(before, fmt.start, "before the system message")
    if start_known is not None and fmt.start != start_known:
        raise NotReducible(f"the conversation start differs with ({fmt.start!r}) and without "
                           f"({start_known!r}) a system message")


def _derive_trim(fmt: ChatFormat, render) -> None:
    """Whether the template strips whitespace around each role's content."""
    conversation = [_msg("user", PAD + U1 + PAD), _msg("assistant", PAD + A1 + PAD)]
    if fmt.system != "none":
        conversation.insert(0, _msg("system", PAD + S1 + PAD))
    text = render(conversation)
    for role, word in (("system", S1), ("user", U1), ("assistant", A1)):
        if role == "system" and fmt.system == "none":
            continue
        fmt.trim[role] = PAD + word + PAD not in text


def verification_conversations() -> list[list[dict]]:
    """Conversations the reduced form must render exactly as jinja2 does: single and
    multi-turn, with and without a system message, contents with surrounding
    whitespace, newlines, non-ASCII text and template-like braces."""
    s, u, a = (lambda c: _msg("system", c)), (lambda c: _msg("user", c)), \
        (lambda c: _msg("assistant", c))
    return [
        [u("Hello!")],
        [s("You are terse."), u("What is 2+2?")],
        [u("Hi"), a("Hello, how can I help?"), u("Tell me a joke.")],
        [s("Be kind."), u("Hi"), a("Hello."), u("Bye"), a("Goodbye!")],
        [u("  padded question \n"), a("\n answer with\nlines  "), u("{{ not a template }} {% x %}")],
        [s("  système: réponds en français  "), u("héllo 世界 🙂"), a("¡hola! 😀")],
        [u("Only"), a("one exchange")],
        [u(""), a(""), u("empty contents before")],
        [u("Hi"), a("Hello."), s("From now on, answer in one word."), u("Why?")],
    ]


def verify_chat_format(fmt: ChatFormat, template: str, bos_token: str, eos_token: str) -> None:
    """Raises NotReducible naming the first conversation whose reduced rendering
    differs from jinja2's."""
    for conversation in verification_conversations():
        if fmt.system == "none":
            conversation = [m for m in conversation if m["role"] != "system"]
        elif fmt.system != "turn" and any(m["role"] == "system" for m in conversation[1:]):
            continue  # a later system message: rejected by the reduced form, by design
        for gen in (False, True):
            expected = render_chat(template, conversation, bos_token, eos_token,
                                   add_generation_prompt=gen)
            try:
                got = render_turns(fmt, conversation, gen)
            except ChatFormatError as e:
                raise NotReducible(f"the reduced form rejects a conversation the template "
                                   f"renders ({e})") from None
            if got != expected:
                raise NotReducible(f"for {conversation} (generation prompt {gen}) the reduced "
                                   f"form gives {got!r}, the template {expected!r}")


def chat_format_metadata(tokenizer) -> tuple[dict, str]:
    """(chat.* keys, note) for a source's TokenizerInfo: the keys when its chat
    template reduces, else no keys and a note saying why (the file still works
    from Python, which renders the template with jinja2)."""
    template = tokenizer.chat_template
    if not template:
        return {}, ""
    try:
        from tokenizers import Tokenizer

        bos_token, eos_token = special_token_texts(
            Tokenizer.from_str(tokenizer.json), tokenizer.bos_token_id,
            tokenizer.eos_token_ids) if tokenizer.json else ("", "")
        return derive_chat_format(template, bos_token, eos_token).metadata(), ""
    except Exception as e:  # noqa: BLE001 - any template failure is reported, never fatal
        return {}, (f"the chat template cannot be reduced to fixed strings per turn ({e}); "
                    "chat prompts work from Python (jinja2) but not from C++")


def special_token_texts(tokenizer, bos_id: int, eos_ids: list[int]) -> tuple[str, str]:
    """The texts the template's bos_token and eos_token stand for: those of the
    model's BOS id and first EOS id in `tokenizer` (a tokenizers.Tokenizer; ""
    when absent)."""
    return ((tokenizer.id_to_token(bos_id) or "") if bos_id >= 0 else "",
            (tokenizer.id_to_token(eos_ids[0]) or "") if eos_ids else "")
