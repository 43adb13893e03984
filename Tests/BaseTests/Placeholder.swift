import Testing
@Test func placeholder_BaseTests() {}
