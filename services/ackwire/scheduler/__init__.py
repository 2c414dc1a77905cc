"""The scheduler: owns every job's life from accepted to its terminal delivery."""
