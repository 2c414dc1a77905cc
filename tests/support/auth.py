TEST_SECRET = "test-secret-for-ackwire-tests-only"
