"""The paper's linear-model simulations (Jing et al. 2022, sections 4 and 5)."""
