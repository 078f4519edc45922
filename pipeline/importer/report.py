"""What an import did with each Fluentd directive: the report printed for the operator.

Four kinds of finding, in the order they are printed:

* ``refused``: not translated; the operator must act (the exit status becomes 2).
* ``secret``: a credential left out of the TOML, with the variable or file to set instead.
* ``approximated``: translated, with a stated difference in behaviour.
* ``note``: translated as is; said so that nothing happens silently (positions seeded, ...).

>>> report = Report()
>>> report.add("refused", "a.conf:3", "<parse> @type regexp", "only JSON lines are read")
>>> report.exit_status, report.render().splitlines()[1]
(2, '  a.conf:3  <parse> @type regexp: only JSON lines are read')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["refused", "secret", "approximated", "note"]
_TITLES: dict[Kind, str] = {
    "refused": "Not translated (do this by hand):",
    "secret": "Secrets (not copied; set them this way):",
    "approximated": "Translated with a difference:",
    "note": "Notes:",
}


@dataclass(frozen=True)
class Finding:
    """One thing the operator should know, with where in the Fluentd config it comes from."""

    kind: Kind
    where: str
    directive: str
    message: str


@dataclass
class Report:
    """Findings in the order they were made."""

    findings: list[Finding] = field(default_factory=list)

    def add(self, kind: Kind, where: str, directive: str, message: str) -> None:
        """Record a finding."""
        self.findings.append(Finding(kind, where, directive, message))

    def of_kind(self, kind: Kind) -> list[Finding]:
        """The findings of one kind."""
        return [f for f in self.findings if f.kind == kind]

    @property
    def exit_status(self) -> int:
        """0 when everything was translated, 2 when something was refused."""
        return 2 if self.of_kind("refused") else 0

    def render(self) -> str:
        """The report as text, grouped by kind."""
        lines: list[str] = []
        for kind, title in _TITLES.items():
            found = self.of_kind(kind)
            if found:
                lines.append(title)
                lines += [f"  {f.where}  {f.directive}: {f.message}" for f in found]
        if not lines:
            lines.append("Everything was translated as is.")
        return "\n".join(lines) + "\n"
