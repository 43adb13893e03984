import Testing
@Test func placeholder_CommandTests() {}
