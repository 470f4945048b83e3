"""Explanations: the line that tells a shopper why they see a recommended item.

RecGPT-V2 writes it by meta-prompting: a style guide first (tone, audience, angle, from the
interest, the item and the situation), then the explanation written to that guide. Two baselines
run beside it on the same (user, item) pairs: `single` (one prompt, no guide; also V1's form) and
`template` (a fixed sentence). Every explanation passes the deterministic rules of
`recgpt.explain.rules` before it is written; a violation is a failure row with its reason.
"""
