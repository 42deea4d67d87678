"""Teacher generation at scale with verified filtering (`jaxtune synth`): `job` runs a job (`job.run`,
`job.Settings`, `job.Options`), `verify` decides which samples are kept, `output` writes OUT.jsonl resumably.
Nothing is imported here, so that the command line checks `--verify` before jax loads."""
