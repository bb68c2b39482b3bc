"""Signed model bundles and the A/B slot manager (ota/SPEC.md): `bundle` builds and verifies,
`keys` handles Ed25519 keys, `slots` keeps model/state.json, `manager` runs trials."""
