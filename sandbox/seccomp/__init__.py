"""Seccomp: policies as data, compiled to BPF, and the notifications a policy's kill sends.

- `policy`: the TOML model, parsed, validated and resolved (inheritance);
- `compiler`: a policy to BPF, its rules tested in order (`bpf`: the assembler);
- `regions`: a call's rules as disjoint regions, to reason about a policy;
- `prebuilt`: the shipped policies' filters, built with the wheel;
- `notify`: receiving and answering a user notification (the supervisor's side).

`sbx policy list|show|check` is `sandbox/cli/policy.py`.

Nothing is imported here: a box under a shipped policy loads only `prebuilt` (and `notify`'s names).
"""
