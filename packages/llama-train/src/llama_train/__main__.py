from llama_train.cli import main

main()
