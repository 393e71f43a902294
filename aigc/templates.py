"""Prompt and document templates: style packs of Jinja files, rendered in a sandbox with strict variables."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from aigc.backends.base import Message
from aigc.errors import ConfigError, TemplateError
from aigc.paths import templates_dir

#: The templates every style pack provides (its own or inherited from ``base``).
STEPS = ("outline", "section", "document")
TEMPLATE_FILES = {"outline": "outline.j2", "section": "section.j2", "document": "document.md.j2"}
PAGE_TEMPLATE = "base/page.html.j2"
#: Folders of the templates root that are not style packs.
NON_STYLES = {"base"}


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt: chat messages, and the hash of every template file it came from."""

    messages: tuple[Message, ...]
    template_hash: str


class TemplateStore:
    """Style packs under one root folder (``templates/``); a pack is a folder of Jinja files."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else templates_dir()
        if not self.root.is_dir():
            raise ConfigError(
                f"templates folder {self.root} does not exist; set AIGC_TEMPLATES_DIR or --templates-dir"
            )
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(self.root)),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            autoescape=jinja2.select_autoescape(["html.j2", "html"], default_for_string=False),
        )
        self.env.filters["anchor"] = anchor

    # -- discovery -----------------------------------------------------------------
    def styles(self) -> list[str]:
        """Names of the style packs: folders that have an outline, section or document template."""
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir()
            and p.name not in NON_STYLES
            and not p.name.startswith((".", "_"))
            and any((p / f).is_file() for f in TEMPLATE_FILES.values())
        )

    def check_style(self, style: str) -> None:
        if style not in self.styles():
            raise ConfigError(
                f"unknown style {style!r}; choose one of: {', '.join(self.styles())} "
                f"(style packs are folders in {self.root})"
            )

    def template_name(self, style: str, step: str, lang: str | None = None) -> str:
        """The file a step of a style uses: the pack's own, else the base one.

        With a language other than English, a pack's language folder comes first: ``<style>/<lang>/``,
        then ``base/<lang>/`` (e.g. ``base/zh/section.j2``), then the English files, which say "Write in
        <language>" themselves. Which languages have templates is up to the packs, not the code.
        """
        self.check_style(style)
        fname = TEMPLATE_FILES[step]
        candidates = [f"{style}/{fname}", f"base/{fname}"]
        if lang:
            code = lang.split("-", 1)[0].lower()
            if code != "en":
                candidates[:0] = [f"{style}/{code}/{fname}", f"base/{code}/{fname}"]
        return next((c for c in candidates[:-1] if (self.root / c).is_file()), candidates[-1])

    def pack_setting(self, style: str, step: str, block: str) -> str:
        """The text of a constant ``{% block NAME %}`` a pack's template (or the base it extends) sets, "" if none.

        A pack's settings are such blocks, e.g. ``{% block words_per_section %}all{% endblock %}`` in
        ``section.j2``; they are read without a context, so they must not use variables.
        """
        from jinja2 import meta

        name = self.template_name(style, step)
        for _ in range(8):  # follow {% extends %} to the base
            template = self._get(name)
            if block in template.blocks:
                try:
                    return "".join(template.blocks[block](template.new_context({}))).strip()
                except jinja2.TemplateError as err:
                    raise self._wrap(err, name) from None
            parent = next(iter(meta.find_referenced_templates(self.env.parse(self._source(name)))), None)
            if not parent:
                return ""
            name = parent
        return ""

    # -- hashing -------------------------------------------------------------------
    def _sources(self, name: str, seen: set[str] | None = None) -> Iterable[str]:
        """The template and every template it extends, includes or imports."""
        from jinja2 import meta

        seen = set() if seen is None else seen
        if name in seen:
            return seen
        seen.add(name)
        source = self._source(name)
        try:
            refs = meta.find_referenced_templates(self.env.parse(source, name=name))
        except jinja2.TemplateSyntaxError as err:
            raise TemplateError(err.message or "syntax error", template=self._display(name), line=err.lineno) from None
        for ref in refs:
            if ref:
                self._sources(ref, seen)
        return seen

    def _source(self, name: str) -> str:
        try:
            return self.env.loader.get_source(self.env, name)[0]
        except jinja2.TemplateNotFound:
            raise TemplateError("template not found", template=self._display(name)) from None

    def sources(self, name: str) -> set[str]:
        """The names of the template and of every template it extends, includes or imports."""
        return set(self._sources(name))

    def template_hash(self, name: str) -> str:
        """SHA-256 over the content of the template and everything it pulls in."""
        h = hashlib.sha256()
        for dep in sorted(self._sources(name)):
            h.update(dep.encode() + b"\0" + self._source(dep).encode() + b"\0")
        return h.hexdigest()[:16]

    def variables(self, name: str) -> tuple[set[str], set[str]]:
        """(read, optional): the context variables a template reads, counting every template it extends,
        includes or imports, and those of them it tests with ``is defined``/``is undefined``."""
        from jinja2 import meta, nodes

        read, optional = set(), set()
        for dep in self._sources(name):
            tree = self.env.parse(self._source(dep), name=dep)
            read |= meta.find_undeclared_variables(tree)
            optional |= {t.node.name for t in tree.find_all(nodes.Test)
                         if t.name in ("defined", "undefined") and isinstance(t.node, nodes.Name)}
        return read, optional & read

    def style_hashes(self, style: str) -> dict[str, str]:
        return {step: self.template_hash(self.template_name(style, step)) for step in STEPS}

    # -- rendering -----------------------------------------------------------------
    def _display(self, name: str) -> str:
        return str(self.root / name)

    def _get(self, name: str) -> jinja2.Template:
        try:
            return self.env.get_template(name)
        except jinja2.TemplateSyntaxError as err:
            tname = err.filename or err.name or name
            raise TemplateError(err.message or "syntax error", template=_rel(tname, self.root), line=err.lineno) from None
        except jinja2.TemplateNotFound as err:
            raise TemplateError(f"template {err.name!r} not found", template=self._display(name)) from None

    def _wrap(self, err: Exception, name: str) -> TemplateError:
        line, tname = _error_location(err, name)
        if isinstance(err, jinja2.UndefinedError):
            style = name.split("/", 1)[0] if "/" in name and name.split("/", 1)[0] not in NON_STYLES else "STYLE"
            msg = f"{err.message}; `aigc templates vars {style}` lists the variables each template may use"
        elif isinstance(err, (jinja2.exceptions.SecurityError, OverflowError)):  # the sandbox's range limit: OverflowError
            msg = f"not allowed in the template sandbox: {err}"
        else:
            msg = f"{type(err).__name__}: {err}"
        return TemplateError(msg, template=_rel(tname, self.root), line=line)

    def render(self, name: str, context: dict[str, Any]) -> str:
        """Render a whole template to text."""
        template = self._get(name)
        try:
            return template.render(context)
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError, ArithmeticError) as err:
            raise self._wrap(err, name) from None

    def render_messages(self, name: str, context: dict[str, Any]) -> Rendered:
        """Render a prompt template's ``system``, ``user`` and ``assistant`` blocks into chat messages.

        A non-empty ``assistant`` block is a prefill: the start of the reply the model continues.
        """
        template = self._get(name)
        try:
            ctx = template.new_context(dict(context))
            # Rendering the root once registers every block of the inheritance chain.
            full = "".join(template.root_render_func(ctx))
            messages = []
            for role in ("system", "user", "assistant"):
                stack = ctx.blocks.get(role)
                if stack:
                    text = "".join(stack[0](ctx)).strip()
                    if text:
                        messages.append(Message(role=role, content=text))
            if not messages and full.strip():
                messages.append(Message(role="user", content=full.strip()))
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError, ArithmeticError) as err:
            raise self._wrap(err, name) from None
        if not any(m.role == "user" for m in messages):
            raise TemplateError("prompt template renders no user message (define {% block user %})", template=self._display(name))
        return Rendered(messages=tuple(messages), template_hash=self.template_hash(name))


    def render_blocks(self, name: str, context: dict[str, Any], blocks: Sequence[str]) -> dict[str, str]:
        """The text of some named blocks of a template ("" for a block it does not define): settings a style pack
        gives in its templates, such as which outline sections come first."""
        template = self._get(name)
        try:
            ctx = template.new_context(dict(context))
            "".join(template.root_render_func(ctx))
            return {b: "".join(ctx.blocks[b][0](ctx)).strip() if ctx.blocks.get(b) else "" for b in blocks}
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError, ArithmeticError) as err:
            raise self._wrap(err, name) from None


def _rel(name: str, root: Path) -> str:
    p = Path(name)
    return str(p if p.is_absolute() else root / p)


def _error_location(err: Exception, name: str) -> tuple[int | None, str]:
    """The template file and line an exception was raised at, from its traceback."""
    lineno = getattr(err, "lineno", None)
    tname = getattr(err, "filename", None) or getattr(err, "name", None) or name
    tb = err.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_globals.get("__jinja_template__")
        if filename is not None:
            lineno = filename.get_corresponding_lineno(tb.tb_lineno)
            tname = filename.filename or filename.name or tname
        tb = tb.tb_next
    return lineno, tname


def anchor(text: str, separator: str = "-") -> str:
    """The link id of a heading with this text; aigc's Markdown pages give their headings the same ids.

    python-markdown's slug (ASCII) where it keeps every letter; with letters ASCII cannot hold (Chinese,
    Cyrillic, ...) its Unicode slug, so a link is ``#城市热岛效应的成因``, never an empty ``#``.
    """
    from markdown.extensions.toc import slugify, slugify_unicode

    text = str(text)
    ascii_id = slugify(text, separator)
    letters = sum(c.isalnum() for c in text)
    if letters and sum(c.isalnum() for c in ascii_id) < letters:
        unicode_id = slugify_unicode(text, separator)
        if unicode_id:
            return unicode_id
    return ascii_id
