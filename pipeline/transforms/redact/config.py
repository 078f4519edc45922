"""``[transforms.NAME] type = "redact"``: which fields are scanned, which detectors run, and how."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from pipeline.configbase import Component

Mode = Literal["mask", "hash", "drop", "off"]
MODE_HELP = "mask: [REDACTED:NAME]; hash: [HMAC:NAME:hex] (keyed, joinable); drop: remove the field; off."
DEFAULT_FIELDS = ["input", "output", "prompt", "response", "completion", "messages", "system"]


def _mode(description: str) -> Mode:
    return Field("mask", description=f"{description} ({MODE_HELP})")


class DetectorModes(Component):
    """``[transforms.NAME.detectors]``: one mode per built-in detector."""

    email: Mode = _mode("E-mail addresses")
    phone: Mode = _mode("Phone numbers: +CC international, 00CC, (NNN) NNN-NNNN and grouped national forms")
    payment_card: Mode = _mode("Payment card numbers (13-19 digits, Luhn-checked)")
    iban: Mode = _mode("IBANs (length per country and mod-97 checksum checked)")
    ipv4: Mode = _mode("IPv4 addresses")
    ipv6: Mode = _mode("IPv6 addresses")
    aws_access_key: Mode = _mode("AWS access key ids (AKIA…, ASIA…)")
    aws_secret_key: Mode = _mode("AWS secret access keys next to their name or an access key id")
    openai_key: Mode = _mode("OpenAI API keys (sk-…, sk-proj-…)")
    anthropic_key: Mode = _mode("Anthropic API keys (sk-ant-…)")
    google_api_key: Mode = _mode("Google API keys (AIza…)")
    github_token: Mode = _mode("GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_)")
    gitlab_token: Mode = _mode("GitLab tokens (glpat-…)")
    slack_token: Mode = _mode("Slack tokens (xoxb-, xoxp-, …)")
    stripe_key: Mode = _mode("Stripe secret and restricted keys (sk_live_, rk_test_, …)")
    jwt: Mode = _mode("JSON Web Tokens")
    private_key: Mode = _mode("PEM private key blocks")
    bearer_token: Mode = _mode("Tokens after 'Bearer ' (Authorization headers pasted into text)")


class UserPattern(Component):
    """``[transforms.NAME.patterns.PATTERN]``: a pattern of your own, named by its key."""

    regex: str = Field(description="Python regular expression; a group named 'value' limits what is replaced.")
    mode: Mode = Field("mask", description=MODE_HELP)
    anchor: str | None = Field(
        None, description="A regex (Hyperscan syntax) matching part of every match: lets the prefilter skip "
        "records without it; without an anchor every record is checked with `regex`, several times slower.",
    )

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from exc
        if compiled.match(""):
            raise ValueError("the pattern matches the empty string")
        return value


class RedactTransformConfig(Component):
    """``type = "redact"``: find personal data and secrets in chosen fields and mask, hash or drop them."""

    type: Literal["redact"]
    fields: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FIELDS),
        description="Top-level keys scanned; strings nested in their lists and objects (message lists) too.",
    )
    summary_key: str = Field("redactions", description="Key of the per-detector counts added to a changed record.")
    detectors: DetectorModes = Field(default_factory=DetectorModes)
    patterns: dict[str, UserPattern] = Field(default_factory=dict, description="Your own detectors, by name.")
    hash_key: SecretStr | None = Field(None, description="HMAC key for hash mode (better: the environment).")
    hash_key_file: Path | None = Field(None, description="File holding the HMAC key for hash mode.")

    @field_validator("fields")
    @classmethod
    def _some_fields(cls, value: list[str]) -> list[str]:
        if not value or any(not name for name in value):
            raise ValueError("name at least one field, none of them empty")
        return value

    @field_validator("patterns")
    @classmethod
    def _pattern_names(cls, value: dict[str, UserPattern]) -> dict[str, UserPattern]:
        for name in value:
            if name in DetectorModes.model_fields or not re.fullmatch(r"[A-Za-z0-9_]+", name):
                raise ValueError(f"pattern name {name!r}: letters, digits and '_' only, not a built-in detector")
        return value

    @model_validator(mode="after")
    def _hash_needs_key(self) -> RedactTransformConfig:
        if self.hash_key is not None and self.hash_key_file is not None:
            raise ValueError("set hash_key or hash_key_file, not both")
        if "hash" in self.modes().values() and self.hash_key is None and self.hash_key_file is None:
            raise ValueError(
                "hash mode needs hash_key_file (or hash_key, e.g. from LOGFERRY_TRANSFORMS__NAME__HASH_KEY)"
            )
        return self

    def modes(self) -> dict[str, Mode]:
        """Every detector's mode by name: built-in ones first, then the user patterns."""
        modes: dict[str, Mode] = dict(self.detectors.model_dump())
        modes.update({name: pattern.mode for name, pattern in self.patterns.items()})
        return modes
