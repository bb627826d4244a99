"""The findings list at the top of a report: one item per sentence, each linking to the section that shows it.

Imports markupsafe, not ``.html``: html.py renders this list itself, so this module cannot import it back.
The sentences hold data (prompts, token strings, model names): every one is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup

from ..analyses.findings import Finding, analyze_findings
from ..analyses.structure import Structure

FINDINGS_ID = "findings"


def findings_section(findings: Sequence[Finding], heading: str = "Findings") -> list[Markup]:
    """A heading and a short list of the sentences, each with a link to its figure or table (nothing
    when there is no finding). The template is the module's own literal; sentences and anchors are escaped."""
    if not findings:
        return []
    items = Markup("").join(
        Markup("<li>{} <a href='#{}'>(see)</a></li>").format(finding.text, finding.anchor) for finding in findings
    )
    return [
        Markup("<h2 id='{}'>{}</h2>").format(FINDINGS_ID, heading),
        Markup("<ul class='findings'>{}</ul>").format(items),
    ]


def analyze_findings_section(structure: Structure) -> list[Markup]:
    """The findings of an analyze run, rendered."""
    return findings_section(analyze_findings(structure))
