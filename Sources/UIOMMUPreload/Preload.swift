import CUIOMMUInterpose
public enum _UIOMMUPreloadPlaceholder {}
