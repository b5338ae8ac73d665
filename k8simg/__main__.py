from k8simg.cli import main

main()
