"""The simulated sky and its cadence: OpSim visits, stars, galaxies, transients, lenses."""
