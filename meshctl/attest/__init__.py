"""Attested join: verify a node's cloud identity document and decide, by join policy, whether it may join.

Pure verification (no network, no store): the caller passes the trust roots (`load_trust`), the time, and
for Azure a nonce; it gets an `Identity` or an `AttestError` subclass with a one-line `reason`. `decide` then
applies the join policies and returns `Admitted(region, policy_id)` or `Refused(rule, reason)`.

    identity = verify_aws(document, signature, trust.aws, now)            # /rsa2048 PKCS#7
    identity = verify_gcp(token, trust.gcp, audience=controller_url, now=now)
    identity = verify_azure(attested, trust.azure, nonce_issuer, now)      # then mark the nonce used
    verdict = decide(identity, policies, nodes_per_region, claimed_region)

Imports only meshctl.core, the standard library, cryptography and pydantic.
"""

from meshctl.attest.aws import verify_aws
from meshctl.attest.azure import verify_azure
from meshctl.attest.errors import (
    AttestError,
    ClockSkew,
    Expired,
    Malformed,
    NonceMismatch,
    NotConfigured,
    NotYetValid,
    SignatureInvalid,
    UnknownKey,
    UntrustedSigner,
    WrongAudience,
    WrongCloud,
)
from meshctl.attest.gcp import verify_gcp
from meshctl.attest.identity import Identity
from meshctl.attest.nonce import NonceIssuer
from meshctl.attest.policy import Admitted, JoinPolicy, Refused, conflicts, decide
from meshctl.attest.trust import ENV_VAR, AwsCert, AwsTrust, AzureTrust, GcpTrust, Trust, load_trust

__all__ = [
    "ENV_VAR",
    "Admitted",
    "AttestError",
    "AwsCert",
    "AwsTrust",
    "AzureTrust",
    "ClockSkew",
    "Expired",
    "GcpTrust",
    "Identity",
    "JoinPolicy",
    "Malformed",
    "NonceIssuer",
    "NonceMismatch",
    "NotConfigured",
    "NotYetValid",
    "Refused",
    "SignatureInvalid",
    "Trust",
    "UnknownKey",
    "UntrustedSigner",
    "WrongAudience",
    "WrongCloud",
    "conflicts",
    "decide",
    "load_trust",
    "verify_aws",
    "verify_azure",
    "verify_gcp",
]
