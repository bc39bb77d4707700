"""The RA3 EM loop: rounds of E-step -> prepare -> M-step in one resumable run directory
(`loop`), with pluggable prepare and M-step phases (`phases`)."""
