import Testing
@Test func placeholder_HardwareTests() {}
