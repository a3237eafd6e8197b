"""CI verdicts on spectra (:mod:`.verdicts`), the comparison with a baseline (:mod:`.baseline`:
comparable conventions, sample counts, paired error bars) and their reports: JSON and JUnit
(:mod:`.reports`), the Markdown step summary (:mod:`.summary`)."""
