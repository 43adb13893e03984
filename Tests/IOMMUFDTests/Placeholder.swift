import Testing
@Test func placeholder_IOMMUFDTests() {}
