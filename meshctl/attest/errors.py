"""Why an attestation was refused: one class per cause, each with a one-line reason.

    AttestError                 base; `.reason` is the one-line message, `.status` the HTTP status to map to
    ├── Malformed               not a document of the expected shape (bad base64, JSON, DER, JWT, missing claim)
    ├── WrongCloud              a document of one cloud presented as another
    ├── NotConfigured           this controller has no trust roots for that cloud
    ├── UnknownKey              signed by a key or certificate the trust roots do not hold
    │   └── UntrustedSigner     Azure: the signer certificate does not chain to a configured root, or is not Azure's
    ├── SignatureInvalid        the signature does not match the signed bytes (forged or altered)
    ├── WrongAudience           GCP: the token was minted for another audience (or issuer)
    ├── Expired                 past its expiry, or issued longer ago than allowed (stale)
    ├── NotYetValid             GCP `nbf` in the future
    ├── ClockSkew               issued in the future beyond the allowed skew: a clock is wrong
    └── NonceMismatch           Azure: the signed nonce is not the one expected, not ours, expired or reused

Every error is an authentication failure (401). A join *policy* refusal is not an exception: `decide` returns
`Refused(rule, reason)`, which maps to 403.
"""

from __future__ import annotations


class AttestError(Exception):
    """A cloud identity document was not accepted; `reason` says why in one line."""

    status = 401
    slug = "attestation-refused"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Malformed(AttestError):
    """The input is not a well-formed document of the kind expected."""

    slug = "malformed"


class WrongCloud(AttestError):
    """A document of one cloud presented as another (e.g. a GCP token sent as AWS)."""

    slug = "wrong-cloud"


class NotConfigured(AttestError):
    """No trust roots are configured for this cloud."""

    slug = "not-configured"


class UnknownKey(AttestError):
    """The signing key or certificate is not among the configured trust roots."""

    slug = "unknown-key"


class UntrustedSigner(UnknownKey):
    """The signer certificate does not chain to a configured root, or is not for the cloud's metadata domain."""

    slug = "untrusted-signer"


class SignatureInvalid(AttestError):
    """The signature does not verify over the signed bytes: forged or altered."""

    slug = "signature-invalid"


class WrongAudience(AttestError):
    """The token names another audience or issuer."""

    slug = "wrong-audience"


class Expired(AttestError):
    """Past its expiry time, or issued too long ago (stale)."""

    slug = "expired"


class NotYetValid(AttestError):
    """Not valid before a time still in the future."""

    slug = "not-yet-valid"


class ClockSkew(AttestError):
    """Issued in the future by more than the allowed skew: the node's or the controller's clock is wrong."""

    slug = "clock-skew"


class NonceMismatch(AttestError):
    """The signed nonce is not the expected one (or not ours, or expired, or already used)."""

    slug = "nonce-mismatch"
