import java.util.ArrayList;
import java.util.List;
import java.util.Scanner;

public class Main {
    public static void main(String[] args) throws Exception {
        String mode = new Scanner(System.in).next();
        switch (mode) {
            case "ok" -> System.out.println(42);
            case "wa" -> System.out.println(41);
            case "tle" -> { long n = 0; while (true) n += System.nanoTime() & 1; }
            case "mle" -> {
                List<byte[]> kept = new ArrayList<>();
                while (true) kept.add(new byte[1 << 20]);
            }
            case "re" -> throw new IllegalStateException("crash");
            case "threads" -> {
                int[] halves = new int[2];
                Thread a = new Thread(() -> halves[0] = 21), b = new Thread(() -> halves[1] = 21);
                a.start(); b.start(); a.join(); b.join();
                System.out.println(halves[0] + halves[1]);
            }
            default -> System.exit(3);
        }
    }
}
