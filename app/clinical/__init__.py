"""Pure clinical logic for the bots and ``starvit calc``: no I/O, no FHIR models.

One module per calculation (``bmi``, ``obesity``, ``blood_pressure``, ``egfr``, ``hba1c``),
each citing its source next to its constants; ``result`` holds the shared result types and
``evidence`` the plain input types. docs/CLINICAL_LOGIC.md explains every rule.
"""
