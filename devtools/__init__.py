"""Development tools: the local Medplum stand-in's launcher, the Synthea loader and the
scripted clinician used by ``make demo``, the integration tests and the benchmarks. Nothing
here runs in production."""
