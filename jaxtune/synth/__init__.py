"""Teacher generation at scale with verified filtering (`jaxtune synth`): `job` runs a job, `verify` decides
which samples are kept, `output` writes OUT.jsonl resumably."""

from jaxtune.synth.job import Options, Settings, run

__all__ = ["Options", "Settings", "run"]
