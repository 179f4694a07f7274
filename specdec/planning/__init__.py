"""Planning each step's draft: measured costs, chain length and tree shape planners, fallbacks."""
