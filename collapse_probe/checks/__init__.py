"""CI verdicts on spectra (:mod:`.verdicts`) and their reports: JSON and JUnit (:mod:`.reports`),
the Markdown step summary (:mod:`.summary`)."""
