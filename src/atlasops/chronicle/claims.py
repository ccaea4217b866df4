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
from dataclasses import dataclass, replace

ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty").split()
TENS = {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
        "ninety": 90}
WORDS: dict[str, int] = {w: i for i, w in enumerate(ONES)} | TENS
for _tens, _t in ({"twenty": 20} | TENS).items():
    for _unit in range(1, 10):
        WORDS[f"{_tens}-{ONES[_unit]}"] = _t + _unit
_SMALL = "|".join(sorted(WORDS, key=len, reverse=True))
_HUNDREDS = rf"(?:{_SMALL}|a)\s+hundred(?:\s+(?:and\s+)?(?:{_SMALL}))?"
_BELOW_THOUSAND = rf"(?:{_HUNDREDS}|{_SMALL})"
_SPELLED = (rf"(?:{_BELOW_THOUSAND}|a)\s+thousand(?:,?\s+(?:and\s+)?{_BELOW_THOUSAND})?|"
            rf"{_HUNDREDS}|{_SMALL}")
SCALES = "hundred|thousand|million|billion|trillion"
# Digits are bounded (a run of 16,000 digits is no count, and reading it must stay
# linear); a number never ends before a scale word ("three hundred" is not 3, and "five
# million", which is not read, is not 5).
NUM = (rf"(?<![\w.#$/-])(\d{{1,3}}(?:,\d{{3}}){{1,4}}|\d{{1,12}}|{_SPELLED})"
       rf"(?![\w-]|[.,]\d|\s?%|\s+(?:{SCALES})\b)")
STOP = ("and|or|but|to|of|from|in|on|at|with|were|was|are|is|be|been|by|for|the|a|an|than|"
        "more|fewer|less|other|extra|that|which|this|these|those|per|each|every|not|no|it|"
        "they|we|he|she|out|all|only|just|about|over|under|after|before|came|had|have|has|"
        + SCALES)
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
# Words ending in s that are not plural nouns ("one was fixed", "one has", "its")
NOT_NOUNS = ("was|has|is|its|this|thus|does|his|hers|ours|yours|theirs|us|as|plus|less|"
             "unless|across|always|perhaps|besides|whereas|yes|towards|afterwards|"
             "[a-z]+ous")  # "1 ambiguous", "2 previous"
# "2 attempted sends", "1 ambiguous email": not a count of emails sent
NOT_SENT = {"attempted", "failed", "ambiguous", "held", "refused", "queued", "approved",
            "pending", "blocked", "unsent", "retried", "retrying", "planned", "scheduled"}
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
    r"(?<![\d.])\d+(?:\.\d+)?\s?%",
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
    at_least: bool = False  # "at least 4 commits", "Commits: at least 4": a lower bound


def unquote(text: str) -> str:
    """Drop quoted spans; keep the words of Markdown links, emphasis and code."""
    text = re.sub(r"“[^”]*”|\"[^\"\n]*\"|‘[^’]*’|(?<![\w])'[^'\n]*'(?![\w])", " ", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"(?<!\w)[*_`]+|[*_`]+(?!\w)|^>\s*", "", text, flags=re.M)


@dataclass(frozen=True)
class Said:
    """A sentence of a post, and where it is: its section (the text under one heading)
    and its paragraph (a block between blank lines; each list item is one too)."""

    text: str
    section: int
    paragraph: int


HEADING = re.compile(r"^\s{0,3}#{1,6}(?:\s+(.*?))?\s*#*\s*$")
ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)]|\|)\s")
NOT_CLAIMS = ("sources",)  # a section that says where numbers came from, not what happened


def read_post(text: str) -> list[Said]:
    """The post's sentences. Headings are titles, not claims, and so is the Sources list
    of a chronicle; a line that wraps inside a paragraph or a list item is joined to it."""
    blocks: list[tuple[int, int, list[str]]] = []
    section = paragraph = 0
    skip = False
    for line in text.splitlines():
        heading = HEADING.match(line)
        if heading:
            section, paragraph = section + 1, paragraph + 1
            skip = (heading.group(1) or "").strip().lower() in NOT_CLAIMS
            continue
        if not line.strip():
            paragraph += 1
            continue
        if skip:
            continue
        item = ITEM.match(line)
        same = bool(blocks) and blocks[-1][:2] == (section, paragraph)
        if same and not item:
            blocks[-1][2].append(line.strip())
            continue
        paragraph += same  # each list item is a paragraph of its own
        blocks.append((section, paragraph, [ITEM.sub("", line).strip()]))
    return [Said(part, sec, par) for sec, par, lines in blocks
            for part in (p.strip(" -•|\t") for p in re.split(r"(?<=[.!?])\s+",
                                                             unquote(" ".join(lines))))
            if part]


def denoise(low: str) -> str:
    """Blank out what only looks like a count; positions are kept."""
    for pattern in NOISE:
        low = pattern.sub(lambda m: " " * len(m.group(0)), low)
    return low


def value(token: str) -> int:
    """``"1,200"``, ``"twelve"``, ``"three hundred and five"``, ``"a thousand"``."""
    if token[0].isdigit():
        return int(token.replace(",", ""))
    total = current = 0
    for word in re.findall(r"[a-z]+(?:-[a-z]+)?", token):
        if word == "hundred":
            current = (current or 1) * 100
        elif word == "thousand":
            total, current = total + (current or 1) * 1000, 0
        elif word in WORDS:
            current += WORDS[word]
    return total + current


SEPARATORS = (",", ";", ":", "(", ")", " — ", " but ")
AT_LEAST = re.compile(r"\bat least\s+$")


def clause_before(low: str, at: int) -> str:
    """The words of the clause (between , ; : ( ) — and "but") before position ``at``."""
    cut = max(low.rfind(sep, 0, at) for sep in SEPARATORS)
    return low[cut + 1:at]


def clause_after(low: str, at: int) -> str:
    """The rest of the clause from position ``at``."""
    ends = [i for i in (low.find(sep, at) for sep in SEPARATORS) if i != -1]
    return low[at:min(ends) if ends else len(low)]


def numbers(sentence: str, authors: list[str], owner: str = "") -> list[Found]:
    """The numeric claims of one sentence. ``owner`` is the owner's first name: a mail
    to the owner is not a send."""
    low = denoise(sentence.lower())
    candidates = list(_candidates(low, authors, owner))
    chosen: list[Found] = []
    for c in sorted(candidates, key=lambda c: (-(c.end - c.start), c.start)):
        if all(c.end <= k.start or c.start >= k.end for k in chosen):
            chosen.append(c)
    chosen += [u for u in _uncovered(low) if all(u.end <= k.start or u.start >= k.end
                                                 for k in chosen)]
    return sorted((replace(c, at_least=bool(AT_LEAST.search(low, 0, c.start) or
                                            "at least" in low[c.start:c.end]))
                   for c in chosen if not NOT_NOW.search(clause_before(low, c.start))),
                  key=lambda c: c.start)


SEND = r"(?:sent|e-?mailed|mailed|delivered)"
SENDABLE = r"(?:e-?mails?|messages?|drafts?|prospects?|leads?|contacts?|people|recipients?)"


def _candidates(low: str, authors: list[str], owner: str) -> Iterator[Found]:
    for key, noun in NOUNS:
        for m in re.finditer(rf"{NUM}\s+(?:(?P<mod>{MOD})\s+)?(?:{noun})\b", low):
            if key != "emails_sent" or m.group("mod") not in NOT_SENT:
                yield Found(m.start(), m.end(), key, value(m.group(1)), m.group(0))
        for m in re.finditer(rf"\b(?:{noun})\s*:\s*(?:at least\s+)?{NUM}", low):
            if not re.search(rf"{NUM}\s*$", low[:m.start()]):  # "3 commits landed: 1 by"
                yield Found(m.start(), m.end(), key, value(m.group(1)), m.group(0))
    # a number before or after a send verb is the number sent ("0 prospects were emailed"
    # is a send of none, not a count of prospects added)
    for m in (*re.finditer(rf"{NUM}\s+(?:{MOD}\s+)?{SENDABLE}\s+(?:(?:were|was|got|have|"
                           rf"has|had|been)\s+)*{SEND}\b", low),
              *re.finditer(rf"\b(?:{SEND}|went out to)\s+(?:(?:out|the|all|only|just)\s+)*"
                           rf"{NUM}(?:\s+{MOD}){{0,2}}", low)):
        if not to_the_owner(low[m.start():], owner):
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
    for m in re.finditer(rf"{NUM}\s+(?:(?P<mod>{MOD})\s+)?(?!(?:{NOT_NOUNS})\b)"
                         r"(?P<noun>[a-z][a-z-]*[a-rt-z]s)\b", low):
        if m.group("noun") not in UNITS:
            noun = " ".join(x for x in (m.group("mod"), m.group("noun")) if x)
            yield Found(m.start(), m.end(), None, value(m.group(1)), noun)


def to_the_owner(text: str, owner: str = "") -> bool:
    """Whether the clause starting ``text`` sends to the owner (by role, or by the
    owner's first name), or for review: a mail for review is not a send."""
    stop = min([i for i in (text.find(s) for s in (",", ";", ".")) if i != -1] or [len(text)])
    who = rf"|{re.escape(owner)}" if owner else ""
    return bool(re.search(rf"\bto (?:the owner|me|him|her|the founder{who})\b|for review|"
                          r"for iteration|owner's inbox", text[:stop]))


__all__ = ["NOT_NOW", "NUM", "Found", "Said", "clause_after", "clause_before", "denoise",
           "numbers", "read_post", "to_the_owner", "unquote", "value"]
