"""Reading a post: its sentences, and the numbers it claims.

A post is split into sentences after quoted spans are dropped (a quotation is
not a claim: "The right report is not “database fixed.”"). Before numbers are
read, whatever only looks like a count is blanked out: dates, times, years,
backup names, ids (#123, event 494, week 15), ranges (events 1..494), versions,
decimals, percentages, money, HTTP status codes and footnote markers.

A numeric claim is a number next to a countable noun ("8 commits", "Emails sent:
0", "sent the 40 approved drafts"). Every pattern that matches is a candidate;
the longest wins and consumes its words, so "1 check failed" is one claim about
failed checks, not also one about checks run. A number next to a countable noun
that no fact covers is returned too, so it is reported instead of skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()
TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
        "ninety": 90}
WORDS: dict[str, int] = {w: i for i, w in enumerate(ONES)} | TENS
for _tens, _t in ({"twenty": 20} | TENS).items():
    for _unit in range(1, 10):
        WORDS[f"{_tens}-{ONES[_unit]}"] = _t + _unit
_SPELLED = "|".join(sorted(WORDS, key=len, reverse=True))
NUM = rf"(?<![\w.#$/-])(\d{{1,3}}(?:,\d{{3}})+|\d+|{_SPELLED})(?![\w-]|[.,]\d|\s?%)"
STOP = ("and|or|but|to|of|from|in|on|at|with|were|was|are|is|be|been|by|for|the|a|an|than|"
        "more|fewer|less|other|extra|that|which|this|these|those|per|each|every|not|no|it|"
        "they|we|he|she|out|all|only|just|about|over|under|after|before|came|had|have|has")
MOD = rf"(?!(?:{STOP})\b)[a-z][a-z'-]*"
# (fact key, the noun phrase). Order does not matter: the longest match wins.
NOUNS: list[tuple[str, str]] = [
    ("commits_agent", r"agent commits?|commits? by (?:an? )?agents?"),
    ("commits_human", r"human commits?|commits? by (?:people|humans?)"),
    ("commits_total", r"commits?(?: total| landed)?"),
    ("jobs_agent", r"agent jobs?(?: run| runs)?|agent job runs?"),
    ("jobs_builtin", r"built-?in jobs?(?: run| runs)?"),
    ("jobs_run", r"jobs?(?: run| runs)?|job runs?"),
    ("prospects_added", r"prospects?(?: added)?|new (?:leads?|prospects?)|leads? added"),
    ("emails_sent", r"(?:prospect |partner |outreach |outbound )?e-?mails?(?: sent| were sent|"
                    r" went out)?|sends?"),
    ("social_posts", r"(?:social |public )?posts?"),
    ("cta_changes", r"cta changes?"),
    ("content_or_deploys", r"content published or deployed receipts?|(?:deploy(?:ment)?|"
                           r"publish(?:ing)?) receipts?|deploys?|deployments?"),
    ("content_drafts", r"content drafts?(?: added)?|(?:article|content) drafts?|articles?"),
    ("backups_validated", r"validated backups?|backups?(?: validated)?"),
    ("checks_failed", r"checks? failed|failed checks?|failing checks?|check failures?"),
    ("checks_run", r"checks?(?: run)?"),
    ("snapshots", r"snapshots?(?: recorded| refreshed)?"),
    ("repairs_fixed", r"repairs? fixed|fixed repairs?"),
    ("repairs", r"repairs?"),
    ("events", r"events?(?: were| was)? recorded|events? (?:in the ledger|of the day)"),
    ("drafts_held", r"(?:approved )?drafts? held|held drafts?"),
    ("approved_waiting", r"approved drafts?(?: waiting)?"),
    ("approval_ready", r"approval-ready drafts?|drafts? (?:are |is )?(?:awaiting approval|"
                       r"approval-ready)"),
    ("send_ready", r"send-ready drafts?|drafts? (?:are |is )?send-ready"),
    ("ambiguous_sends", r"ambiguous sends?"),
    ("touches_due", r"(?:active |due )?touch(?:es)?(?: due)?"),
    ("packet_contacts", r"(?:direct |partner )?contacts?"),
]
# "(1 agent, 2 by people)", "(1 failed)": the fact depends on the noun before it
CONTEXTUAL: dict[tuple[str, str], str] = {
    ("agent", "commit"): "commits_agent", ("people", "commit"): "commits_human",
    ("agent", "job"): "jobs_agent", ("built-in", "job"): "jobs_builtin",
    ("failed", "check"): "checks_failed", ("fixed", "repair"): "repairs_fixed",
}
CONTEXT_TERMS = (r"(?:by\s+)?(?:an?\s+)?(?P<term>agents?|people|humans?|built-?ins?|failed|"
                 r"fixed)\b")
UNITS = {"seconds", "minutes", "hours", "days", "weeks", "months", "years", "times", "ms",
         "bytes", "words", "characters", "lines", "percent", "points", "degrees", "cents",
         "dollars", "kb", "mb", "gb", "steps", "ways", "parts", "others", "ones", "things"}
# Before a claim in its clause, these make it a plan, a condition or a wish, not a fact
NOT_NOW = re.compile(r"\b(?:will|would|should|could|might|shall|plans? to|planning to|"
                     r"going to|needs? to|needed to|wants? to|to be|if|once|until|unless|"
                     r"tomorrow|next)\b")
MONTHS = ("jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
          "sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?")
NOISE = [re.compile(p) for p in (
    r"https?://\S+",
    r"\[\d+\]",  # footnote markers
    r"\b[\w.-]*\d{8}t\d{4,6}\d*z\b",  # backup names and compact stamps
    r"\b\d{4}-\d{2}-\d{2}(?:[t ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?z?)?\b",
    r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s?[ap]\.?m\.?)?(?:\s*[-–—]\s*\d{1,2}:\d{2})?",
    rf"\b(?:{MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b",
    rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{MONTHS})\b(?:,?\s+\d{{4}})?",
    r"#\d+",
    r"\b(?:events?|receipts?|ids?|issues?|pr|steps?|weeks?|days?|versions?|v|phases?|parts?|"
    r"chapters?|sections?|pages?|drafts?|items?|lines?|ports?|runs?|rows?|q[1-4]|fy|"
    r"http|status|code)\s*#?\d[\d,]*(?:\s*(?:\.\.|[-–—])\s*\d+)?\b",
    r"\b\d+\s*(?:\.\.|[–—])\s*\d+\b",
    r"\b(?:returned|returns|return|answered|answers)\s+(?:an?\s+|http\s+)?[1-5]\d\d\b",
    r"\b(?:an?)\s+\d[\d,]*\b(?!-)",  # "a 500", "a 2025 market-data article"
    r"\b(?:in|since|during|until|before|after|of|the|year|from)\s+(?:19|20)\d{2}\b",
    r"\bv?\d+(?:\.\d+)+\b",  # versions, decimals
    r"\d+(?:\.\d+)?\s?%",
    r"[$€£]\s?\d[\d,.]*",
)]


@dataclass(frozen=True)
class Found:
    """A number the post claims, where it is, and which fact it is about (``None``: a
    countable noun no fact covers)."""

    start: int
    end: int
    key: str | None
    value: int
    noun: str


def unquote(text: str) -> str:
    """Drop quoted spans; keep the words of Markdown links, emphasis and code."""
    text = re.sub(r"“[^”]*”|\"[^\"\n]*\"|‘[^’]*’|(?<![\w])'[^'\n]*'(?![\w])", " ", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"(?<!\w)[*_`]+|[*_`]+(?!\w)|^#+\s*|^>\s*", "", text, flags=re.M)


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", unquote(text))
    return [p.strip(" -•\t") for p in parts if p.strip(" -•\t")]


def denoise(low: str) -> str:
    """Blank out what only looks like a count; positions are kept."""
    for pattern in NOISE:
        low = pattern.sub(lambda m: " " * len(m.group(0)), low)
    return low


def value(token: str) -> int:
    return WORDS[token] if token in WORDS else int(token.replace(",", ""))


SEPARATORS = (",", ";", ":", "(", ")", " — ", " but ")


def clause_before(low: str, at: int) -> str:
    """The words of the clause (between , ; : ( ) — and "but") before position ``at``."""
    cut = max(low.rfind(sep, 0, at) for sep in SEPARATORS)
    return low[cut + 1:at]


def clause_after(low: str, at: int) -> str:
    """The rest of the clause from position ``at``."""
    ends = [i for i in (low.find(sep, at) for sep in SEPARATORS) if i != -1]
    return low[at:min(ends) if ends else len(low)]


def numbers(sentence: str, authors: list[str]) -> list[Found]:
    low = denoise(sentence.lower())
    candidates = list(_candidates(low, authors))
    chosen: list[Found] = []
    for c in sorted(candidates, key=lambda c: (-(c.end - c.start), c.start)):
        if all(c.end <= k.start or c.start >= k.end for k in chosen):
            chosen.append(c)
    chosen += [u for u in _uncovered(low) if all(u.end <= k.start or u.start >= k.end
                                                 for k in chosen)]
    return sorted((c for c in chosen if not NOT_NOW.search(clause_before(low, c.start))),
                  key=lambda c: c.start)


def _candidates(low: str, authors: list[str]) -> Iterator[Found]:
    for key, noun in NOUNS:
        for m in re.finditer(rf"{NUM}\s+(?:{MOD}\s+)?(?:{noun})\b", low):
            yield Found(m.start(), m.end(), key, value(m.group(1)), m.group(0))
        for m in re.finditer(rf"\b(?:{noun})\s*:\s*{NUM}", low):
            if not re.search(rf"{NUM}\s*$", low[:m.start()]):  # "3 commits landed: 1 by"
                yield Found(m.start(), m.end(), key, value(m.group(1)), m.group(0))
    for m in re.finditer(rf"\b(?:sent|e-?mailed|mailed|went out to)\s+"
                         rf"(?:(?:out|the|all|only|just)\s+)*{NUM}(?:\s+{MOD}){{0,2}}", low):
        if not _to_the_owner(low, m.start(), m.end()):
            yield Found(m.start(), m.end(), "emails_sent", value(m.group(1)), m.group(0))
    for m in re.finditer(rf"{NUM}\s+{CONTEXT_TERMS}", low):
        term = m.group("term").rstrip("s").replace("builtin", "built-in").replace(
            "human", "people")
        about = re.findall(r"\b(commit|job|check|repair)s?\b", low[:m.start()])
        context = CONTEXTUAL.get((term, about[-1])) if about else None
        if context is not None:
            yield Found(m.start(), m.end(), context, value(m.group(1)), m.group(0))
    if authors:
        names = "|".join(re.escape(a) for a in sorted(authors, key=len, reverse=True))
        for m in re.finditer(rf"{NUM}\s+(?:commits?\s+)?(?:(?:came\s+)?(?:by|from)\s+)?"
                             rf"(?P<who>{names})\b", low):
            yield Found(m.start(), m.end(), f"commits_by:{m.group('who')}",
                        value(m.group(1)), m.group(0))


def _uncovered(low: str) -> Iterator[Found]:
    """A number next to a plural noun that no pattern knows: "100 cross-sell candidates"."""
    for m in re.finditer(rf"{NUM}\s+(?:(?P<mod>{MOD})\s+)?(?P<noun>[a-z][a-z-]*[a-rt-z]s)\b",
                         low):
        if m.group("noun") not in UNITS:
            noun = " ".join(x for x in (m.group("mod"), m.group("noun")) if x)
            yield Found(m.start(), m.end(), None, value(m.group(1)), noun)


def _to_the_owner(low: str, start: int, end: int) -> bool:
    """A mail to the owner, for review, is not a send."""
    rest = low[start:]
    stop = min([i for i in (rest.find(s) for s in (",", ";", ".")) if i != -1] or [len(rest)])
    return bool(re.search(r"\bto (?:the owner|me|him|her|the founder)\b|for review|"
                          r"for iteration|owner's inbox", rest[:stop]))


__all__ = ["NOT_NOW", "NUM", "Found", "clause_after", "clause_before", "denoise", "numbers",
           "sentences", "unquote", "value"]
