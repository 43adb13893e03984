print("uiommufd")
