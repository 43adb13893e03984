import UIOMMUCommands

RootCommand.main()
