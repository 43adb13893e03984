import Testing
@Test func abiPlaceholder() {}
