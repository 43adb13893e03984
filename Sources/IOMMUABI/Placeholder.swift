public enum _IOMMUABIPlaceholder {}
